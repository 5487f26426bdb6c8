//! A scenario's figures: requests, non-200 answers by status, wrong-user
//! answers, p50/p99 per phase, named facts, and the goals checked against them.

use std::collections::BTreeMap;

use super::load::{Answer, PHASES, Sample};

#[derive(Debug, Clone, Default)]
pub struct PhaseStat {
    pub requests: u64,
    pub non_200: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone)]
pub struct Goal {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub requests: u64,
    pub non_200: u64,
    /// Non-200 answers by status ("0" = no response: reset, refused, timeout).
    pub statuses: BTreeMap<u16, u64>,
    pub wrong_user: u64,
    pub phases: [PhaseStat; 3],
    /// First few failures, for diagnosis.
    pub examples: Vec<String>,
    pub facts: Vec<(String, String)>,
    pub goals: Vec<Goal>,
    latencies: [Vec<u64>; 3],
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_string(),
            ..Report::default()
        }
    }

    /// Add requests (load samples or single checked answers).
    pub fn add(&mut self, samples: &[Sample]) {
        for s in samples {
            self.add_answer(s.phase, &s.answer);
        }
    }

    /// Add one checked answer sent in `phase`.
    pub fn add_answer(&mut self, phase: u8, a: &Answer) {
        // Kept sorted: insertion by binary search.
        let l = &mut self.latencies[phase as usize % 3];
        let at = l.partition_point(|&x| x < a.micros);
        l.insert(at, a.micros);
        let (p50, p99) = (percentile(l, 0.50), percentile(l, 0.99));
        self.phases[phase as usize % 3].p50_ms = p50;
        self.phases[phase as usize % 3].p99_ms = p99;
        self.requests += 1;
        let ph = &mut self.phases[phase as usize % 3];
        ph.requests += 1;
        if a.status != 200 {
            self.non_200 += 1;
            ph.non_200 += 1;
            *self.statuses.entry(a.status).or_default() += 1;
            if self.examples.len() < 5 {
                self.examples.push(format!(
                    "{} status {} after {} ms {}",
                    PHASES[phase as usize % 3],
                    a.status,
                    a.micros / 1000,
                    a.error.as_deref().unwrap_or(&a.cache_status)
                ));
            }
        }
        if a.wrong_user {
            self.wrong_user += 1;
        }
    }

    pub fn fact(&mut self, k: &str, v: impl ToString) {
        self.facts.push((k.to_string(), v.to_string()));
    }

    pub fn goal(&mut self, what: &str, ok: bool, detail: impl ToString) {
        self.goals.push(Goal {
            what: what.to_string(),
            ok,
            detail: detail.to_string(),
        });
    }

    /// The two goals of every scenario: no non-200 (where that is the goal)
    /// and no answer for another user (always).
    pub fn standard_goals(&mut self, zero_non_200: bool) {
        if zero_non_200 {
            let d = format!(
                "{} of {} ({:?}) {:?}",
                self.non_200, self.requests, self.statuses, self.examples
            );
            self.goal("0 non-200 answers", self.non_200 == 0, d);
        }
        let d = format!("{} of {}", self.wrong_user, self.requests);
        self.goal("0 wrong-user answers", self.wrong_user == 0, d);
    }

    pub fn passed(&self) -> bool {
        self.goals.iter().all(|g| g.ok)
    }

    /// Human-readable lines, then `CHAOS_JSON {...}`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "== {}: {} requests, {} non-200 {:?}, {} wrong-user\n",
            self.scenario, self.requests, self.non_200, self.statuses, self.wrong_user
        );
        for (name, p) in PHASES.iter().zip(&self.phases) {
            s.push_str(&format!(
                "   {name:<6} {:>7} req  {:>5} non-200  p50 {:>8.1} ms  p99 {:>8.1} ms\n",
                p.requests, p.non_200, p.p50_ms, p.p99_ms
            ));
        }
        for (k, v) in &self.facts {
            s.push_str(&format!("   {k}: {v}\n"));
        }
        for e in &self.examples {
            s.push_str(&format!("   e.g. {e}\n"));
        }
        for g in &self.goals {
            s.push_str(&format!(
                "   [{}] {} ({})\n",
                if g.ok { "PASS" } else { "FAIL" },
                g.what,
                g.detail
            ));
        }
        s.push_str(&format!("CHAOS_JSON {}\n", self.json()));
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let phases: serde_json::Map<String, serde_json::Value> = PHASES
            .iter()
            .zip(&self.phases)
            .map(|(n, p)| {
                (
                    n.to_string(),
                    serde_json::json!({"requests": p.requests, "non_200": p.non_200,
                        "p50_ms": p.p50_ms, "p99_ms": p.p99_ms}),
                )
            })
            .collect();
        serde_json::json!({
            "scenario": self.scenario,
            "requests": self.requests,
            "non_200": self.non_200,
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "wrong_user": self.wrong_user,
            "phases": phases,
            "facts": self.facts.iter().cloned().collect::<BTreeMap<_, _>>(),
            "goals": self.goals.iter().map(|g| serde_json::json!({"goal": g.what, "ok": g.ok, "detail": g.detail})).collect::<Vec<_>>(),
        })
    }

    /// Panic with the whole report unless every goal holds.
    pub fn assert_goals(&self) {
        let text = self.render();
        eprintln!("{text}");
        assert!(self.passed(), "goals not met:\n{text}");
    }
}
