//! Reading TOML key by key, so one bad key is one problem: it neither hides nor invalidates the
//! other keys of its table (serde stops at the first error of a struct, and a table that fails as
//! a whole makes its required keys look missing). Shared by `config` and `policy`.
//!
//! Messages are written here, not passed through from serde/toml: theirs quote the value
//! (`invalid type: string "s3cr3t", expected u64`), and a configuration value may be a secret.
//!
//! Invariant: a leaf (imports nothing from the crate).

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;

/// Where things are in a TOML text: dotted key path (array entries by index, `risks.0.name`)
/// to the 1-based (line, column) of the key (or of the entry, for array entries).
#[derive(Debug, Default, Clone)]
pub struct Spans {
    at: BTreeMap<String, (usize, usize)>,
}

/// A TOML syntax error, located. Its message never holds the text of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not valid TOML at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// 1-based (line, column) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses a TOML document into a table and the positions of its keys; or every syntax error
/// (the parser recovers and goes on, so all of them are reported at once).
pub fn parse(text: &str) -> Result<(toml::Table, Spans), Vec<SyntaxError>> {
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(first) => {
            let (_, all) = toml::de::DeTable::parse_recoverable(text);
            let mut errs: Vec<SyntaxError> = all.iter().map(|e| syntax_error(text, e)).collect();
            // One per line: the parser's recovery can find more in a line it misread.
            errs.sort_by_key(|e| (e.line, e.column));
            errs.dedup_by_key(|e| e.line);
            if errs.is_empty() {
                errs.push(syntax_error(text, &first));
            }
            return Err(errs);
        }
    };
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| vec![syntax_error(text, &e)])?;
    let mut spans = Spans::default();
    walk_table(text, "", doc.get_ref(), &mut spans);
    Ok((table, spans))
}

fn syntax_error(text: &str, e: &toml::de::Error) -> SyntaxError {
    let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
    SyntaxError {
        line,
        column,
        message: safe_syntax_message(e.message()),
    }
}

/// toml's syntax messages name what was expected (`expected `=``) and sometimes a key
/// (`duplicate key `x``); anything longer in backquotes could be a pasted value, so it goes.
fn safe_syntax_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or("").trim();
    let mut out = String::new();
    let mut parts = first.split('`');
    let mut inside = false;
    if let Some(p) = parts.next() {
        out.push_str(p);
    }
    for p in parts {
        inside = !inside;
        if inside {
            if p.chars().count() <= 3 || first.starts_with("duplicate key") {
                out.push('`');
                out.push_str(p);
                out.push('`');
            } else {
                out.push_str("(text not shown)");
            }
        } else {
            out.push_str(p);
        }
    }
    let rest: Vec<&str> = msg.lines().skip(1).map(str::trim).collect();
    if !rest.is_empty() && rest.iter().all(|l| l.starts_with("expected")) {
        out.push_str("; ");
        out.push_str(&rest.join("; "));
    }
    if out.is_empty() {
        "syntax error".into()
    } else {
        out
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(text: &str, prefix: &str, t: &toml::de::DeTable<'_>, spans: &mut Spans) {
    for (k, v) in t {
        let path = join(prefix, k.get_ref());
        spans
            .at
            .entry(path.clone())
            .or_insert_with(|| line_col(text, k.span().start));
        walk_value(text, &path, v, spans);
    }
}

fn walk_value(text: &str, path: &str, v: &toml::Spanned<toml::de::DeValue<'_>>, spans: &mut Spans) {
    match v.get_ref() {
        toml::de::DeValue::Table(t) => walk_table(text, path, t, spans),
        toml::de::DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                let p = format!("{path}.{i}");
                spans.at.insert(p.clone(), line_col(text, e.span().start));
                walk_value(text, &p, e, spans);
            }
        }
        _ => {}
    }
}

impl Spans {
    /// (line, column) of a dotted path, or of its nearest ancestor that has one.
    pub fn get(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(at) = self.at.get(p) {
                return Some(*at);
            }
            p = p.rsplit_once('.')?.0;
        }
    }

    /// (line, column) of exactly this path.
    pub fn exact(&self, path: &str) -> Option<(usize, usize)> {
        self.at.get(path).copied()
    }

    pub fn line(&self, path: &str) -> Option<usize> {
        self.get(path).map(|(l, _)| l)
    }
}

/// One thing wrong with a table read by [`lenient`]: the key (`None`: the table itself) and a
/// message that never holds a value unless `show_values` allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    pub key: Option<String>,
    pub message: String,
}

/// What [`lenient`] read: the value (`None` when a required key is missing or unusable), the
/// problems, and the keys that were dropped for them (so callers skip follow-on checks).
#[derive(Debug)]
pub struct Read<T> {
    pub value: Option<T>,
    pub problems: Vec<KeyProblem>,
    pub bad_keys: BTreeSet<String>,
}

/// Reads `table` as `T` key by key: each key that does not fit is a problem and is dropped; the
/// rest is still read. `required` keys are reported missing all at once. `show_values`: policy
/// values may be quoted (`unknown variant `criticall``); configuration values never are.
pub fn lenient<T: DeserializeOwned>(
    table: &toml::Table,
    required: &[&str],
    show_values: bool,
) -> Read<T> {
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| !table.contains_key(*k))
        .collect();
    if missing.is_empty()
        && let Ok(t) = toml::Value::Table(table.clone()).try_into::<T>()
    {
        return Read {
            value: Some(t),
            problems: Vec::new(),
            bad_keys: BTreeSet::new(),
        };
    }
    let mut problems: Vec<KeyProblem> = missing
        .iter()
        .map(|k| KeyProblem {
            key: None,
            message: format!("missing field `{k}`"),
        })
        .collect();
    let mut good = toml::Table::new();
    let mut bad_keys = BTreeSet::new();
    for (k, v) in table {
        let one: toml::Table = [(k.clone(), v.clone())].into_iter().collect();
        match toml::Value::Table(one).try_into::<T>() {
            Ok(_) => {
                good.insert(k.clone(), v.clone());
            }
            // Only this key was given, so a missing field is another key's absence.
            Err(e) if e.message().starts_with("missing field") => {
                good.insert(k.clone(), v.clone());
            }
            Err(e) => {
                bad_keys.insert(k.clone());
                // "unknown field" may be about a key inside this key's table: then name it.
                let about_key = backquoted(e.message()).first() == Some(k);
                problems.push(KeyProblem {
                    key: Some(k.clone()),
                    message: describe(e.message(), show_values, about_key),
                });
            }
        }
    }
    let unusable = missing.is_empty() && required.iter().any(|r| bad_keys.contains(*r));
    if !missing.is_empty() || unusable {
        return Read {
            value: None,
            problems,
            bad_keys,
        };
    }
    let value = match toml::Value::Table(good).try_into::<T>() {
        Ok(t) => Some(t),
        Err(e) => {
            let m = e.message();
            let already = backquoted(m)
                .first()
                .is_some_and(|f| bad_keys.contains(f.as_str()));
            if !(m.starts_with("missing field") && already) {
                problems.push(KeyProblem {
                    key: None,
                    message: describe(m, show_values, false),
                });
            }
            None
        }
    };
    Read {
        value,
        problems,
        bad_keys,
    }
}

/// The texts between backquotes.
fn backquoted(msg: &str) -> Vec<String> {
    msg.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// serde's type names in plain words.
fn humanize(expected: &str) -> String {
    let e = expected.trim();
    let ints = [
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
    ];
    if ints.contains(&e) {
        return if e.starts_with('u') {
            "a non-negative integer".into()
        } else {
            "an integer".into()
        };
    }
    match e {
        "f32" | "f64" => "a number".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        "a boolean" | "a string" => e.into(),
        "bool" => "a boolean".into(),
        _ if e.starts_with("struct ") || e.starts_with("map") => "a table".into(),
        _ if e.starts_with("a string") || e.starts_with("string") => "a string".into(),
        _ if e.starts_with("enum ") => "one of the allowed values".into(),
        _ if e.starts_with("a ") || e.starts_with("an ") => e.into(),
        _ => e.to_string(),
    }
}

/// A value's kind in words (never the value).
pub fn kind_of_value(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// What serde's "unexpected" part says the value was, in words.
fn kind_of(unexpected: &str) -> &'static str {
    let w = unexpected.trim_start();
    if w.starts_with("string") {
        "a string"
    } else if w.starts_with("integer") {
        "an integer"
    } else if w.starts_with("floating") {
        "a float"
    } else if w.starts_with("boolean") {
        "a boolean"
    } else if w.starts_with("sequence") {
        "an array"
    } else if w.starts_with("map") {
        "a table"
    } else if w.starts_with("unit") || w.starts_with("option") {
        "nothing"
    } else {
        "another kind of value"
    }
}

/// A serde/toml deserialization message, rewritten so it carries no value (unless
/// `show_values`), with a suggestion for near misses. `at_key`: the message concerns one key
/// (an unknown field is then "unknown key").
pub fn describe(msg: &str, show_values: bool, at_key: bool) -> String {
    let msg = msg.lines().next().unwrap_or("").trim();
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let (unexpected, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
        return format!(
            "expected {}, got {}",
            humanize(expected),
            kind_of(unexpected)
        );
    }
    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        let (unexpected, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
        return format!(
            "expected {}, got {} out of range",
            humanize(expected),
            kind_of(unexpected)
        );
    }
    if msg.starts_with("unknown field") || msg.starts_with("unknown variant") {
        let q = backquoted(msg);
        let Some((given, known)) = q.split_first() else {
            return msg.to_owned();
        };
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let hint = did_you_mean(given, &known)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        let list = if known.is_empty() {
            String::new()
        } else {
            format!(
                " (expected one of {})",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return if msg.starts_with("unknown field") {
            // A key is a name, not a value: safe to show.
            if at_key {
                format!("unknown key{hint}{list}")
            } else {
                format!("unknown key `{given}`{hint}{list}")
            }
        } else if show_values {
            format!("unknown variant `{given}`{hint}{list}")
        } else {
            format!("not an allowed value{hint}{list}")
        };
    }
    if msg.starts_with("missing field")
        || msg.starts_with("duplicate field")
        || msg.starts_with("invalid length")
    {
        return msg.to_owned();
    }
    if show_values || !(msg.contains('`') || msg.contains('"') || msg.contains('\'')) {
        msg.to_owned()
    } else {
        "not valid here (value not shown)".into()
    }
}

/// The candidate nearest to `given` when it is a plausible typo (a few edits, or the same word
/// but for case, `-`/`_`, or a missing or added plural `s`).
pub fn did_you_mean<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace(['-', '_', ' '], "");
    let g = norm(given);
    if g.is_empty() {
        return None;
    }
    let max = match g.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .filter(|c| **c != given)
        .map(|c| {
            let n = norm(c);
            // `listen_addr` for `listen`: one word added to or dropped from a known key.
            let prefix = n.len().min(g.len()) >= 4 && (n.starts_with(&g) || g.starts_with(&n));
            let d = strsim::damerau_levenshtein(&g, &n);
            (if prefix { d.min(1) } else { d }, *c)
        })
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The hint after "unknown access package": the near miss among the declared aliases, or where
/// to declare it. Here (a leaf) because both the policy reader and the SoD rules name packages.
pub(crate) fn unknown_package_hint(alias: &str, known: &[&str]) -> String {
    match did_you_mean(alias, known) {
        Some(near) => format!("; did you mean {near:?}? (or declare it under [packages.{alias}])"),
        None => format!(" (declare it under [packages.{alias}])"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Flat {
        concurrency: Option<u64>,
        name: Option<String>,
        on: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Entry {
        name: String,
        owner: String,
        level: Option<Level>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Level {
        Low,
        Critical,
    }

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn one_bad_key_leaves_the_others_read_and_never_shows_the_value() {
        let r: Read<Flat> = lenient(
            &table("concurrency = \"hunter2-secret\"\nname = \"x\"\nconcurency = 3\n"),
            &[],
            false,
        );
        let v = r.value.unwrap();
        assert_eq!(v.name.as_deref(), Some("x"));
        let all = format!("{:?}", r.problems);
        assert!(!all.contains("hunter2"), "{all}");
        assert!(r.problems.contains(&KeyProblem {
            key: Some("concurrency".into()),
            message: "expected a non-negative integer, got a string".into()
        }));
        assert_eq!(r.problems[0].key.as_deref(), Some("concurency"));
        assert!(
            r.problems[0]
                .message
                .starts_with("unknown key; did you mean `concurrency`?"),
            "{all}"
        );
    }

    #[test]
    fn every_missing_field_and_bad_variant_at_once() {
        let r: Read<Entry> = lenient(&table("level = \"criticall\"\n"), &["name", "owner"], true);
        assert!(r.value.is_none());
        let msgs: Vec<&str> = r.problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(msgs[0], "missing field `name`");
        assert_eq!(msgs[1], "missing field `owner`");
        assert!(
            msgs[2].starts_with("unknown variant `criticall`; did you mean `critical`?"),
            "{msgs:?}"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Option<Flat>,
    }

    #[test]
    fn an_unknown_key_inside_a_key_is_named() {
        let r: Read<Outer> = lenient(&table("[inner]\nnam = \"x\"\n"), &[], true);
        assert_eq!(r.problems[0].key.as_deref(), Some("inner"));
        assert!(
            r.problems[0]
                .message
                .starts_with("unknown key `nam`; did you mean `name`?"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn syntax_errors_have_a_line_and_no_text_of_it() {
        let e = parse("[worker]\nconcurrency = 4\nsecret = hunter2-value-xyz\nother = [1\n")
            .unwrap_err();
        assert_eq!(e[0].line, 3, "{e:?}");
        assert!(e.len() >= 2, "every syntax error at once: {e:?}");
        assert!(
            e.iter().all(|e| !e.to_string().contains("hunter2")),
            "{e:?}"
        );
    }

    #[test]
    fn spans_locate_keys_and_array_entries() {
        let (_, s) =
            parse("a = 1\n[worker]\n\nconcurrency = 4\n[[risks]]\nname = \"r\"\n").unwrap();
        assert_eq!(s.line("worker.concurrency"), Some(4));
        assert_eq!(s.line("risks.0.name"), Some(6));
        assert_eq!(s.line("risks.0"), Some(5));
        assert_eq!(s.line("worker.nothing"), Some(2));
    }

    #[test]
    fn near_misses() {
        assert_eq!(
            did_you_mean("payment", &["payments", "hr"]),
            Some("payments")
        );
        assert_eq!(
            did_you_mean(
                "assignmentRequestCreatd",
                &["assignmentRequestCreated", "assignmentRequestGranted"]
            ),
            Some("assignmentRequestCreated")
        );
        assert_eq!(did_you_mean("zzz", &["payments"]), None);
        assert_eq!(
            did_you_mean("listen_addr", &["listen", "data_dir"]),
            Some("listen")
        );
    }
}
