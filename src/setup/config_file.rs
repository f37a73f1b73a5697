//! The `[extensions.NAME]` and `[pim]` sections `accessgate setup` writes into accessgate's
//! configuration file, edited in place (`toml_edit` keeps the file's comments, order and
//! other keys): the resource its PoP tokens are bound to, the catalog, the kind.

use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, value};

use super::graph_admin::SetupError;
use super::plan::{Action, Phase, Step};

#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub extensions: Vec<DesiredExtension>,
    pub pim: Option<DesiredPim>,
}

#[derive(Debug, Clone)]
pub struct DesiredExtension {
    pub name: String,
    /// The Logic App's ARM resource id (`p`).
    pub resource: String,
    /// Entitlement management: the catalog the extension lives in.
    pub catalog_id: Option<String>,
    /// Lifecycle Workflows: the callback timeout (the kind is written too).
    pub lifecycle: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DesiredPim {
    pub name: String,
    pub audience: String,
    pub budget_ms: u64,
    pub post_approval: bool,
}

/// The table `key` of `doc`, made one if it is missing or another kind of item (an inline
/// table keeps its keys).
fn table<'a>(doc: &'a mut Table, key: &str) -> Option<&'a mut Table> {
    let item = doc.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    // An inline table (`elm = { resource = "…" }`) becomes a table with the same keys.
    if let Some(inline) = item.as_inline_table().cloned() {
        *item = Item::Table(inline.into_table());
    }
    if !item.is_table() {
        *item = Item::Table(Table::new());
    }
    item.as_table_mut()
}

fn set_str(t: &mut Table, key: &str, v: &str, lines: &mut Vec<String>, at: &str) {
    let old = t.get(key).and_then(Item::as_str).map(str::to_owned);
    if old.as_deref() != Some(v) {
        lines.push(match old {
            None => format!("+ {at}.{key} = {v:?}"),
            Some(o) => format!("~ {at}.{key} = {o:?} -> {v:?}"),
        });
        t.insert(key, value(v));
    }
}

/// Adds `v` to the string array `key` (kept: what is already there).
fn add_to_array(t: &mut Table, key: &str, v: &str, lines: &mut Vec<String>, at: &str) {
    let present = t.get(key).and_then(Item::as_array).is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str().is_some_and(|s| s.eq_ignore_ascii_case(v)))
    });
    if present {
        return;
    }
    let mut arr = t
        .get(key)
        .and_then(Item::as_array)
        .cloned()
        .unwrap_or_else(Array::new);
    arr.push(v);
    t.insert(key, value(arr));
    lines.push(format!("+ {at}.{key} += {v:?}"));
}

/// Applies `desired` to a configuration document; the diff lines say what changed.
pub fn apply(doc: &mut DocumentMut, desired: &Desired) -> Vec<String> {
    let mut lines = Vec::new();
    let root = doc.as_table_mut();
    for e in &desired.extensions {
        let at = format!("extensions.{}", e.name);
        let Some(t) = table(root, "extensions").and_then(|x| table(x, &e.name)) else {
            continue;
        };
        t.set_implicit(false);
        set_str(t, "resource", &e.resource, &mut lines, &at);
        if let Some(c) = &e.catalog_id {
            add_to_array(t, "catalog_ids", c, &mut lines, &at);
        }
        if let Some(timeout) = &e.lifecycle {
            set_str(t, "kind", "lifecycle_workflows", &mut lines, &at);
            set_str(t, "callback_timeout", timeout, &mut lines, &at);
        }
    }
    if let Some(p) = &desired.pim
        && let Some(pim) = table(root, "pim")
    {
        pim.set_implicit(false);
        add_to_array(pim, "audiences", &p.audience, &mut lines, "pim");
        let at = format!("pim.extensions.{}", p.name);
        if let Some(t) = table(pim, "extensions").and_then(|x| table(x, &p.name)) {
            t.set_implicit(false);
            let budget = i64::try_from(p.budget_ms).unwrap_or(5000);
            if t.get("budget_ms").and_then(Item::as_integer) != Some(budget) {
                lines.push(format!("+ {at}.budget_ms = {budget}"));
                t.insert("budget_ms", value(budget));
            }
            let written = t
                .get("post_approval")
                .and_then(Item::as_bool)
                .unwrap_or(false);
            if p.post_approval != written {
                lines.push(format!("~ {at}.post_approval = {}", p.post_approval));
                t.insert("post_approval", value(p.post_approval));
            }
        }
    }
    lines
}

/// The write of the configuration file, if it would change.
pub fn step(path: &Path, desired: &Desired) -> Result<Option<Step>, SetupError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(SetupError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        SetupError::Config(format!(
            "{} is not valid TOML ({}): fix it or name another file with --write-config",
            path.display(),
            e.message()
        ))
    })?;
    let lines = apply(&mut doc, desired);
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(Step {
        phase: Phase::Config,
        sign: '~',
        title: format!("update {}", path.display()),
        lines,
        action: Action::WriteConfig {
            path: path.to_owned(),
            text: doc.to_string(),
        },
    }))
}

/// Replaces the file (through its link, if it is one) with `text`, keeping its permissions
/// (a configuration may hold secrets: a new file is made readable by its owner only).
pub fn write(path: &Path, text: &str) -> Result<(), SetupError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fail =
        |e: std::io::Error| SetupError::Config(format!("cannot write {}: {e}", path.display()));
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mode = std::fs::metadata(&target).map_or(0o600, |m| m.permissions().mode() & 0o777);
    let tmp = target.with_extension("setup-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    std::fs::rename(&tmp, &target).map_err(fail)
}

/// The sections as text, for a run without a configuration file.
pub fn snippet(desired: &Desired) -> String {
    let mut doc = DocumentMut::new();
    apply(&mut doc, desired);
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            extensions: vec![
                DesiredExtension {
                    name: "elm".into(),
                    resource:
                        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Logic/workflows/l"
                            .into(),
                    catalog_id: Some("c1".into()),
                    lifecycle: None,
                },
                DesiredExtension {
                    name: "lcw".into(),
                    resource:
                        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Logic/workflows/t"
                            .into(),
                    catalog_id: None,
                    lifecycle: Some("PT1H".into()),
                },
            ],
            pim: Some(DesiredPim {
                name: "pim".into(),
                audience: "api://accessgate".into(),
                budget_ms: 6000,
                post_approval: false,
            }),
        }
    }

    #[test]
    fn an_inline_table_keeps_its_keys() {
        let mut doc: DocumentMut = "[extensions]\nelm = { policy_file = \"p.toml\" }\n"
            .parse()
            .unwrap();
        apply(&mut doc, &desired());
        let out = doc.to_string();
        assert!(out.contains("policy_file = \"p.toml\""), "{out}");
        assert!(out.contains("resource = "), "{out}");
    }

    #[test]
    fn writing_keeps_the_mode_and_goes_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        std::fs::write(&real, "# secret\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("accessgate.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write(&link, "# new\n").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "# new\n");
        let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A new file is the owner's only.
        let fresh = dir.path().join("fresh.toml");
        write(&fresh, "x = 1\n").unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn keeps_comments_and_other_keys_and_a_second_pass_changes_nothing() {
        let text = "# my config\n[identity]\ntenant_id = \"t\"\n\n[extensions.elm]\n# bound to the relay\npolicy_file = \"elm.toml\"\ncatalog_ids = [\"c0\"]\n";
        let mut doc: DocumentMut = text.parse().unwrap();
        let lines = apply(&mut doc, &desired());
        let out = doc.to_string();
        assert!(out.starts_with("# my config\n[identity]"), "{out}");
        assert!(
            out.contains("# bound to the relay\npolicy_file = \"elm.toml\""),
            "{out}"
        );
        assert!(out.contains("catalog_ids = [\"c0\", \"c1\"]"), "{out}");
        assert!(out.contains("[extensions.lcw]"), "{out}");
        assert!(out.contains("kind = \"lifecycle_workflows\""), "{out}");
        assert!(out.contains("audiences = [\"api://accessgate\"]"), "{out}");
        assert!(
            lines.iter().any(|l| l.contains("extensions.elm.resource")),
            "{lines:?}"
        );
        let mut again: DocumentMut = out.parse().unwrap();
        assert!(apply(&mut again, &desired()).is_empty());
        assert_eq!(again.to_string(), out);
    }
}
