"""The data set and the Superset objects of a run, created through Superset's
REST API as an admin would: database, dataset, two RLS roles, users alice and
bob, four charts and a dashboard. Also the per-user expected values, computed
from the SQLite data directly."""

import json
import sqlite3

USERS = {"alice": "north", "bob": "south"}
PASSWORD = "e2e-user-pw"
REGIONS = ["north", "south", "east", "west"]
PRODUCTS = ["anvil", "bolt", "crate", "drill", "easel"]
CHANNELS = ["online", "retail", "partner"]


def make_data_db(path):
    """sales(order_date, region, product, channel, revenue, units): 24 months x
    4 regions x 5 products, integer amounts so sums compare exactly."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE sales (order_date TEXT, region TEXT, product TEXT,"
                " channel TEXT, revenue INTEGER, units INTEGER)")
    rows = []
    for m in range(24):
        y, mo = 2023 + m // 12, m % 12 + 1
        for ri, r in enumerate(REGIONS):
            for pi, p in enumerate(PRODUCTS):
                ch = CHANNELS[(m + ri + pi) % len(CHANNELS)]
                rev = 100 + 37 * m + 101 * ri + 13 * pi + (m * pi * 7) % 50
                rows.append((f"{y}-{mo:02d}-15", r, p, ch, rev, 1 + (m + pi) % 9))
    con.executemany("INSERT INTO sales VALUES (?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


def insert_row(path, region, revenue):
    con = sqlite3.connect(path)
    con.execute("INSERT INTO sales VALUES ('2024-12-20', ?, 'anvil', 'online', ?, 1)",
                (region, revenue))
    con.commit()
    con.close()


def expected(path, region):
    """What a user whose RLS is `region = <region>` must see, per chart kind."""
    con = sqlite3.connect(path)
    q = lambda sql: con.execute(sql, (region,)).fetchall()  # noqa: E731
    total = q("SELECT SUM(revenue) FROM sales WHERE region = ?")[0][0]
    table = {p: [r, u] for p, r, u in q(
        "SELECT product, SUM(revenue), SUM(units) FROM sales WHERE region = ? GROUP BY product")}
    pie = {c: r for c, r in q(
        "SELECT channel, SUM(revenue) FROM sales WHERE region = ? GROUP BY channel")}
    con.close()
    return {"big_number_total": total, "table": table, "pie": pie,
            "echarts_timeseries_line": {"regions": [region], "total": total}}


def summarize(viz, payload):
    """Reduce a chart-data response body to the form `expected` returns, or
    None when it is not a successful data answer."""
    try:
        res = payload["result"][0]
        data = res["data"]
        if viz == "big_number_total":
            return data[0]["SUM(revenue)"]
        if viz == "table":
            return {d["product"]: [d["SUM(revenue)"], d["SUM(units)"]] for d in data}
        if viz == "pie":
            return {d["channel"]: d["SUM(revenue)"] for d in data}
        if viz == "echarts_timeseries_line":
            cols = [c for c in res["colnames"] if c != "order_date"]
            total = sum(v for d in data for k, v in d.items() if k != "order_date" and v)
            return {"regions": sorted(cols), "total": round(total, 6)}
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None


def rows_of(payload):
    """The part of a chart-data body that two answers must share: colnames and rows."""
    try:
        return [(r.get("colnames"), r.get("data")) for r in payload["result"]]
    except (KeyError, TypeError):
        return None


# ---- chart definitions (form_data as the Explore view saves it) ----

def _filters():
    return [{"clause": "WHERE", "subject": "order_date", "operator": "TEMPORAL_RANGE",
             "comparator": "No filter", "expressionType": "SIMPLE"}]


def _metric(col):
    return {"expressionType": "SIMPLE", "column": {"column_name": col}, "aggregate": "SUM",
            "label": f"SUM({col})"}


def chart_defs(ds):
    dsn = f"{ds}__table"
    common = {"datasource": dsn, "time_range": "No filter", "adhoc_filters": _filters()}
    return [
        ("Total revenue", dict(common, viz_type="big_number_total", metric=_metric("revenue"),
                               header_font_size=0.4, subheader_font_size=0.15,
                               y_axis_format=",d", time_format="smart_date")),
        ("Monthly revenue by region", dict(
            common, viz_type="echarts_timeseries_line", x_axis="order_date",
            time_grain_sqla="P1M", x_axis_sort_asc=True, metrics=[_metric("revenue")],
            groupby=["region"], row_limit=10000, truncate_metric=True, show_legend=True,
            rich_tooltip=True, comparison_type="values", order_desc=True, seriesType="line")),
        ("Revenue by product", dict(
            common, viz_type="table", query_mode="aggregate", groupby=["product"],
            metrics=[_metric("revenue"), _metric("units")], all_columns=[],
            percent_metrics=[], order_by_cols=[], row_limit=1000, server_page_length=10,
            order_desc=True, table_timestamp_format="smart_date",
            timeseries_limit_metric=_metric("revenue"))),
        ("Revenue share by channel", dict(
            common, viz_type="pie", groupby=["channel"], metric=_metric("revenue"),
            row_limit=100, sort_by_metric=True, donut=False, show_labels=True,
            label_type="key_percent", number_format="SMART_NUMBER")),
    ]


def query_context(ds, fd, force=False):
    """The query context the front end builds for a chart (its buildQuery)."""
    viz = fd["viz_type"]
    q = {"filters": [{"col": "order_date", "op": "TEMPORAL_RANGE", "val": "No filter"}],
         "extras": {"having": "", "where": ""}, "applied_time_extras": {}, "columns": [],
         "metrics": [_metric("revenue")], "orderby": [], "annotation_layers": [],
         "series_limit": 0, "order_desc": True, "url_params": {}, "custom_params": {},
         "custom_form_data": {}}
    desc = [[_metric("revenue"), False]]
    if viz == "echarts_timeseries_line":
        q.update(columns=[{"timeGrain": "P1M", "columnType": "BASE_AXIS",
                           "sqlExpression": "order_date", "label": "order_date",
                           "expressionType": "SQL"}, "region"],
                 orderby=desc, row_limit=10000, series_columns=["region"], time_offsets=[],
                 post_processing=[
                     {"operation": "pivot", "options": {
                         "index": ["order_date"], "columns": ["region"],
                         "aggregates": {"SUM(revenue)": {"operator": "mean"}},
                         "drop_missing_columns": False}},
                     {"operation": "rename", "options": {
                         "columns": {"SUM(revenue)": None}, "level": 0, "inplace": True}},
                     {"operation": "flatten"}])
    elif viz == "table":
        q.update(columns=["product"], metrics=[_metric("revenue"), _metric("units")],
                 orderby=desc, row_limit=1000, post_processing=[])
    elif viz == "pie":
        q.update(columns=["channel"], orderby=desc, row_limit=100)
    return {"datasource": {"id": ds, "type": "table"}, "force": force, "queries": [q],
            "form_data": fd, "result_format": "json", "result_type": "full"}


def _ok(r, what, codes=(200, 201)):
    if r.status not in codes:
        raise RuntimeError(f"{what} -> {r.status}: {r.body[:400]!r}")
    return r.json() if r.body else {}


def _role_id(admin, name):
    q = "(page_size:100)"
    for r in _ok(admin.call("GET", f"/api/v1/security/roles/?q={q}"), "list roles")["result"]:
        if r["name"] == name:
            return r["id"]
    raise RuntimeError(f"no role {name}")


def _datasource_perm_id(admin, ds):
    """The permission-view id of "datasource access on [e2e].[sales](id:N)"."""
    page = 0
    while page < 50:
        body = _ok(admin.call(
            "GET", f"/api/v1/security/permissions-resources/?q=(page:{page},page_size:100)"),
            "list permissions")
        for pv in body["result"]:
            if (pv["permission"]["name"] == "datasource_access"
                    and pv["view_menu"]["name"].endswith(f"(id:{ds})")):
                return pv["id"]
        if len(body["result"]) < 100:
            break
        page += 1
    raise RuntimeError(f"no datasource_access permission for dataset {ds}")


def create_all(admin, data_db):
    """Create every object; returns ids and the charts' (id, viz, form_data)."""
    db = _ok(admin.call("POST", "/api/v1/database/", {
        "database_name": "e2e", "sqlalchemy_uri": f"sqlite:///{data_db}",
        "expose_in_sqllab": True}), "create database")["id"]
    ds = _ok(admin.call("POST", "/api/v1/dataset/", {
        "database": db, "table_name": "sales"}), "create dataset")["id"]
    perm = _datasource_perm_id(admin, ds)
    gamma = _role_id(admin, "Gamma")
    for user, region in USERS.items():
        role = _ok(admin.call("POST", "/api/v1/security/roles/", {"name": f"e2e_{region}"}),
                   "create role")["id"]
        _ok(admin.call("POST", f"/api/v1/security/roles/{role}/permissions",
                       {"permission_view_menu_ids": [perm]}), "grant dataset access")
        _ok(admin.call("POST", "/api/v1/security/users/", {
            "active": True, "username": user, "first_name": user.title(), "last_name": "E2e",
            "email": f"{user}@example.invalid", "password": PASSWORD,
            "roles": [gamma, role]}), f"create user {user}")
        _ok(admin.call("POST", "/api/v1/rowlevelsecurity/", {
            "name": f"{region} only", "filter_type": "Regular", "tables": [ds],
            "roles": [role], "clause": f"region = '{region}'", "group_key": "",
            "description": ""}), "create RLS rule")
    dash = _ok(admin.call("POST", "/api/v1/dashboard/", {
        "dashboard_title": "Sales e2e", "slug": "sales-e2e", "published": True}),
        "create dashboard")["id"]
    charts = []
    for name, fd in chart_defs(ds):
        cid = _ok(admin.call("POST", "/api/v1/chart/", {
            "slice_name": name, "viz_type": fd["viz_type"], "datasource_id": ds,
            "datasource_type": "table", "params": json.dumps(fd), "dashboards": [dash]}),
            f"create chart {name}")["id"]
        fd = dict(fd, slice_id=cid)
        qc = query_context(ds, fd)
        _ok(admin.call("PUT", f"/api/v1/chart/{cid}", {
            "params": json.dumps(fd), "query_context": json.dumps(qc),
            "query_context_generation": True}), f"save query context {cid}")
        charts.append({"id": cid, "name": name, "viz": fd["viz_type"], "form_data": fd})
    _ok(admin.call("PUT", f"/api/v1/dashboard/{dash}", {
        "position_json": json.dumps(_layout(charts)),
        "json_metadata": json.dumps({"color_scheme": "", "refresh_frequency": 0,
                                     "expanded_slices": {}, "label_colors": {},
                                     "timed_refresh_immune_slices": [],
                                     "default_filters": "{}", "filter_scopes": {}})}),
        "save dashboard layout")
    return {"database": db, "dataset": ds, "dashboard": dash, "slug": "sales-e2e",
            "charts": charts}


def _layout(charts):
    pos = {"DASHBOARD_VERSION_KEY": "v2",
           "ROOT_ID": {"type": "ROOT", "id": "ROOT_ID", "children": ["GRID_ID"]},
           "GRID_ID": {"type": "GRID", "id": "GRID_ID", "children": [], "parents": ["ROOT_ID"]},
           "HEADER_ID": {"id": "HEADER_ID", "type": "HEADER", "meta": {"text": "Sales e2e"}}}
    for i in range(0, len(charts), 2):
        row = f"ROW-{i}"
        pos["GRID_ID"]["children"].append(row)
        pos[row] = {"type": "ROW", "id": row, "children": [],
                    "parents": ["ROOT_ID", "GRID_ID"],
                    "meta": {"background": "BACKGROUND_TRANSPARENT"}}
        for c in charts[i:i + 2]:
            key = f"CHART-{c['id']}"
            pos[row]["children"].append(key)
            pos[key] = {"type": "CHART", "id": key, "children": [],
                        "parents": ["ROOT_ID", "GRID_ID", row],
                        "meta": {"width": 6, "height": 50, "chartId": c["id"],
                                 "sliceName": c["name"]}}
    return pos
