"""Unit tests of the harness's pure parts (no Superset needed):
python3 -m unittest discover -s e2e/harness -p 'test_*.py'"""

import base64
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import browser, objects  # noqa: E402
from harness.client import Client, Response, jwt_payload  # noqa: E402


def body(colnames, data):
    return {"result": [{"colnames": colnames, "data": data}]}


class ExpectedValues(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.db = os.path.join(self.dir.name, "data.db")
        objects.make_data_db(self.db)

    def tearDown(self):
        self.dir.cleanup()

    def test_users_see_different_values(self):
        a, b = objects.expected(self.db, "north"), objects.expected(self.db, "south")
        for viz in a:
            self.assertNotEqual(a[viz], b[viz], viz)

    def test_insert_row_changes_one_region_only(self):
        north, south = objects.expected(self.db, "north"), objects.expected(self.db, "south")
        objects.insert_row(self.db, "north", 1000)
        self.assertEqual(objects.expected(self.db, "north")["big_number_total"],
                         north["big_number_total"] + 1000)
        self.assertEqual(objects.expected(self.db, "south"), south)


class Summaries(unittest.TestCase):
    def test_each_viz(self):
        self.assertEqual(objects.summarize("big_number_total",
                                           body(["SUM(revenue)"], [{"SUM(revenue)": 7}])), 7)
        self.assertEqual(objects.summarize("table", body(
            ["product", "SUM(revenue)", "SUM(units)"],
            [{"product": "bolt", "SUM(revenue)": 5, "SUM(units)": 2}])), {"bolt": [5, 2]})
        self.assertEqual(objects.summarize("pie", body(
            ["channel", "SUM(revenue)"], [{"channel": "online", "SUM(revenue)": 3}])),
            {"online": 3})
        ts = body(["order_date", "north"], [{"order_date": 1, "north": 2.0},
                                            {"order_date": 2, "north": None}])
        self.assertEqual(objects.summarize("echarts_timeseries_line", ts),
                         {"regions": ["north"], "total": 2.0})

    def test_not_data(self):
        self.assertIsNone(objects.summarize("table", {"message": "Forbidden"}))
        self.assertIsNone(objects.summarize("pie", None))
        self.assertIsNone(objects.rows_of({"channel_id": "x"}))

    def test_viz_of_matches_columns(self):
        self.assertEqual(browser.viz_of(body(["SUM(revenue)"], [])), "big_number_total")
        self.assertEqual(browser.viz_of(body(["order_date", "south"], [])),
                         "echarts_timeseries_line")
        self.assertIsNone(browser.viz_of({"result": []}))


class Cookies(unittest.TestCase):
    def test_channel_from_async_token(self):
        payload = base64.urlsafe_b64encode(json.dumps(
            {"channel": "c-1", "sub": "2"}).encode()).rstrip(b"=").decode()
        c = Client("http://127.0.0.1:1")
        c._take_cookies(Response(200, [
            ("Set-Cookie", "session=abc.def; HttpOnly; Path=/"),
            ("Set-Cookie", f"async-token=h.{payload}.s; Path=/")], b"", 0))
        self.assertEqual(c.cookies["session"], "abc.def")
        self.assertEqual(c.channel(), "c-1")

    def test_bad_jwt(self):
        self.assertIsNone(jwt_payload("not-a-jwt"))
        self.assertIsNone(jwt_payload("a.!!!.b"))

    def test_header_joins_duplicates(self):
        r = Response(200, [("Vary", "Cookie"), ("vary", "Accept-Encoding")], b"", 0)
        self.assertEqual(r.header("VARY"), "Cookie,Accept-Encoding")


if __name__ == "__main__":
    unittest.main()
