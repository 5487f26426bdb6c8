//! Chart-data response bodies: Superset's envelope around rows of the
//! synthetic sales dataset the fixtures were captured with, and filler that
//! compresses about as badly as real rows do.

/// A deterministic Superset chart-data response of about `target` bytes: the
/// `result[0].data` rows of the synthetic sales dataset in Superset's envelope.
pub fn superset_response(target: usize) -> Vec<u8> {
    const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
    const CHANNELS: [&str; 3] = ["online", "retail", "partner"];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ target as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let head = r#"{"result":[{"cache_key":"4f3c1d9a8b7e6f5a4b3c2d1e0f9a8b7c","cached_dttm":null,"cache_timeout":86400,"applied_template_filters":[],"annotation_data":{},"error":null,"is_cached":null,"query":"SELECT order_date, region, product, channel, revenue, units FROM sales LIMIT 10000","status":"success","stacktrace":null,"rowcount":0,"sql_rowcount":0,"from_dttm":null,"to_dttm":null,"label_map":{},"colnames":["order_date","region","product","channel","revenue","units"],"indexnames":[],"coltypes":[2,1,1,1,0,0],"data":["#;
    let tail = r#"],"result_format":"json","applied_filters":[],"rejected_filters":[]}]}"#;
    let mut out = String::with_capacity(target + 256);
    out.push_str(head);
    let mut first = true;
    let mut day: u64 = 1_672_531_200_000;
    while out.len() + tail.len() < target {
        let r = next();
        if !first {
            out.push(',');
        }
        first = false;
        day += 86_400_000 * (r % 2);
        out.push_str(&format!(
            r#"{{"order_date":{},"region":"{}","product":"product-{:03}","channel":"{}","revenue":{}.{:02},"units":{}}}"#,
            day,
            REGIONS[(r >> 8) as usize % 4],
            (r >> 12) % 250,
            CHANNELS[(r >> 20) as usize % 3],
            (r >> 24) % 100_000,
            (r >> 40) % 100,
            (r >> 48) % 50 + 1
        ));
    }
    out.push_str(tail);
    out.into_bytes()
}

/// `len` pseudo-random characters of a 64-letter alphabet (seeded by `seed`):
/// real result rows do not compress to nothing, and neither does this.
pub fn filler(seed: u64, len: usize) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ABC[(x & 63) as usize] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_size_is_close_and_json() {
        for n in [1024, 50 * 1024, 500 * 1024] {
            let r = superset_response(n);
            assert!(
                r.len() <= n + 200 && r.len() + 200 >= n,
                "{n} -> {}",
                r.len()
            );
            serde_json::from_slice::<serde_json::Value>(&r).unwrap();
        }
    }

    #[test]
    fn response_is_deterministic() {
        assert_eq!(superset_response(4096), superset_response(4096));
    }

    #[test]
    fn filler_is_seeded_and_sized() {
        assert_eq!(filler(7, 300).len(), 300);
        assert_eq!(filler(7, 64), filler(7, 64));
        assert_ne!(filler(7, 64), filler(8, 64));
    }
}
