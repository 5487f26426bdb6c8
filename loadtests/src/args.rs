//! Minimal `--key value` argument parsing (no dependency, fast to build).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;

pub struct Args {
    map: HashMap<String, String>,
    used: RefCell<HashSet<String>>,
}

impl Args {
    pub fn parse(raw: &[String]) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let Some(k) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if let Some((k, v)) = k.split_once('=') {
                map.insert(k.to_string(), v.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
                map.insert(k.to_string(), v.clone());
            }
        }
        Ok(Args {
            map,
            used: RefCell::default(),
        })
    }

    pub fn get<T: FromStr>(&self, k: &str, default: T) -> Result<T, String> {
        self.used.borrow_mut().insert(k.to_string());
        match self.map.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{k}: cannot parse {v:?}")),
        }
    }

    pub fn opt(&self, k: &str) -> Option<String> {
        self.used.borrow_mut().insert(k.to_string());
        self.map.get(k).cloned()
    }

    pub fn string(&self, k: &str, default: &str) -> String {
        self.opt(k).unwrap_or_else(|| default.to_string())
    }

    /// Reject keys nobody asked for (typos).
    pub fn finish(&self) -> Result<(), String> {
        let used = self.used.borrow();
        let mut unknown: Vec<&String> = self.map.keys().filter(|k| !used.contains(*k)).collect();
        unknown.sort();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown options: {unknown:?}"))
        }
    }
}
