//! Label and field selectors: parsing the query-string syntax, converting `LabelSelector`
//! objects, matching, and printing them back the way Kubernetes does.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    #[error("invalid label key {key:?}: {reason}")]
    Key { key: String, reason: String },
    #[error("invalid label value {value:?}: {reason}")]
    Value { value: String, reason: String },
    #[error("invalid selector operator {0:?}")]
    Operator(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
    #[error("invalid field selector: {0}")]
    Field(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    /// Sorted and deduplicated.
    pub values: Vec<String>,
}

impl Requirement {
    fn new(key: &str, op: Op, mut values: Vec<String>) -> Result<Requirement, SelectorError> {
        if let Some(reason) = crate::names::qualified_name(key).into_iter().next() {
            return Err(SelectorError::Key {
                key: key.to_string(),
                reason,
            });
        }
        match op {
            Op::In | Op::NotIn if values.is_empty() => {
                return Err(SelectorError::Syntax(format!(
                    "{key}: for 'in', 'notin' operators, values set can't be empty"
                )));
            }
            Op::Equals | Op::NotEquals if values.len() != 1 => {
                return Err(SelectorError::Syntax(format!(
                    "{key}: exact-match compatibility requires one single value"
                )));
            }
            Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                return Err(SelectorError::Syntax(format!(
                    "{key}: values set must be empty for exists and does not exist"
                )));
            }
            Op::Gt | Op::Lt if values.len() != 1 || values[0].parse::<i64>().is_err() => {
                return Err(SelectorError::Syntax(format!(
                    "{key}: for 'Gt', 'Lt' operators, exactly one integer value is required"
                )));
            }
            _ => {}
        }
        if !matches!(op, Op::Gt | Op::Lt) {
            for v in &values {
                if let Some(reason) = crate::names::label_value(v).into_iter().next() {
                    return Err(SelectorError::Value {
                        value: v.clone(),
                        reason,
                    });
                }
            }
        }
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            op,
            values,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.key);
        match self.op {
            Op::Equals | Op::In => got.is_some_and(|v| self.values.contains(v)),
            Op::NotEquals | Op::NotIn => !got.is_some_and(|v| self.values.contains(v)),
            Op::Exists => got.is_some(),
            Op::DoesNotExist => got.is_none(),
            Op::Gt | Op::Lt => {
                let (Some(v), Ok(bound)) = (got, self.values[0].parse::<i64>()) else {
                    return false;
                };
                let Ok(v) = v.parse::<i64>() else {
                    return false;
                };
                if self.op == Op::Gt {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vals = self.values.join(",");
        match self.op {
            Op::Equals => write!(f, "{}={}", self.key, vals),
            Op::NotEquals => write!(f, "{}!={}", self.key, vals),
            Op::In => write!(f, "{} in ({})", self.key, vals),
            Op::NotIn => write!(f, "{} notin ({})", self.key, vals),
            Op::Exists => write!(f, "{}", self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
            Op::Gt => write!(f, "{}>{}", self.key, vals),
            Op::Lt => write!(f, "{}<{}", self.key, vals),
        }
    }
}

/// A conjunction of label requirements. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelectorExpr {
    pub requirements: Vec<Requirement>,
    /// A `LabelSelector` object can say "match nothing" (nil selector); the string form cannot.
    pub nothing: bool,
}

impl LabelSelectorExpr {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn nothing() -> Self {
        LabelSelectorExpr {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Parse the string syntax of `?labelSelector=`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut lexer = Lexer::new(s);
        let mut requirements = Vec::new();
        loop {
            lexer.skip_ws();
            if lexer.at_end() {
                break;
            }
            requirements.push(parse_requirement(&mut lexer)?);
            lexer.skip_ws();
            if lexer.at_end() {
                break;
            }
            if !lexer.eat(",") {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: ',' or end of string",
                    lexer.rest()
                )));
            }
        }
        requirements.sort();
        Ok(LabelSelectorExpr {
            requirements,
            nothing: false,
        })
    }

    /// Convert the object form used in specs. A missing selector selects nothing; an empty one
    /// selects everything.
    pub fn from_object(sel: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        let Some(sel) = sel else {
            return Ok(Self::nothing());
        };
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(k, Op::Equals, vec![v.clone()])?);
        }
        for expr in sel.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => return Err(SelectorError::Operator(other.to_string())),
            };
            requirements.push(Requirement::new(
                &expr.key,
                op,
                expr.values.clone().unwrap_or_default(),
            )?);
        }
        requirements.sort();
        Ok(LabelSelectorExpr {
            requirements,
            nothing: false,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelectorExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

/// Print a spec's selector the way `kubectl get -o wide` shows it, `<none>` when empty.
pub fn describe(sel: Option<&LabelSelector>) -> String {
    match LabelSelectorExpr::from_object(sel) {
        Ok(s) if !s.requirements.is_empty() => s.to_string(),
        _ => "<none>".to_string(),
    }
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str) -> Self {
        Lexer { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn skip_ws(&mut self) {
        while self.rest().starts_with([' ', '\t', '\n']) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// A run of characters that may appear in keys and values.
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.rest().chars().next() {
            if c.is_whitespace() || matches!(c, ',' | '=' | '!' | '(' | ')' | '<' | '>') {
                break;
            }
            self.pos += c.len_utf8();
        }
        &self.s[start..self.pos]
    }
}

fn parse_requirement(lx: &mut Lexer) -> Result<Requirement, SelectorError> {
    if lx.eat("!") {
        lx.skip_ws();
        let key = lx.word();
        return Requirement::new(key, Op::DoesNotExist, Vec::new());
    }
    let key = lx.word();
    if key.is_empty() {
        return Err(SelectorError::Syntax(format!(
            "found '{}', expected: identifier",
            lx.rest()
        )));
    }
    lx.skip_ws();
    if lx.at_end() || lx.rest().starts_with(',') {
        return Requirement::new(key, Op::Exists, Vec::new());
    }
    let op = if lx.eat("==") || lx.eat("=") {
        Op::Equals
    } else if lx.eat("!=") {
        Op::NotEquals
    } else if lx.eat(">") {
        Op::Gt
    } else if lx.eat("<") {
        Op::Lt
    } else {
        let w = lx.word();
        match w {
            "in" => Op::In,
            "notin" => Op::NotIn,
            _ => {
                return Err(SelectorError::Syntax(format!(
                    "found '{w}', expected: '=', '!=', '==', 'in', 'notin'"
                )));
            }
        }
    };
    lx.skip_ws();
    let values = if matches!(op, Op::In | Op::NotIn) {
        if !lx.eat("(") {
            return Err(SelectorError::Syntax(format!(
                "found '{}', expected: '('",
                lx.rest()
            )));
        }
        let mut values = Vec::new();
        loop {
            lx.skip_ws();
            let v = lx.word();
            lx.skip_ws();
            if !v.is_empty() {
                values.push(v.to_string());
            }
            if lx.eat(")") {
                break;
            }
            if !lx.eat(",") {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: ',' or ')'",
                    lx.rest()
                )));
            }
        }
        values
    } else {
        vec![lx.word().to_string()]
    };
    Requirement::new(key, op, values)
}

/// One `field=value` or `field!=value` term of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub value: String,
    pub negated: bool,
}

/// A conjunction of field terms. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parse `?fieldSelector=`. Values may escape `\,`, `\=` and `\\`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in split_unescaped(s, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let (field, value, negated) = if let Some((f, v)) = split_op(&part, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = split_op(&part, "==") {
                (f, v, false)
            } else if let Some((f, v)) = split_op(&part, "=") {
                (f, v, false)
            } else {
                return Err(SelectorError::Field(format!(
                    "{part:?}: expected an operator ('=', '==' or '!=')"
                )));
            };
            terms.push(FieldTerm {
                field: field.trim().to_string(),
                value: unescape(&value),
                negated,
            });
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    /// Check every field against the ones a kind supports.
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), SelectorError> {
        for t in &self.terms {
            if !supported.contains(&t.field.as_str()) {
                return Err(SelectorError::UnsupportedField(t.field.clone()));
            }
        }
        Ok(())
    }

    /// The value a term requires for `field`, if one term pins it exactly.
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }

    /// `lookup` gives an object's value for a field; a missing field matches as empty.
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.terms.iter().all(|t| {
            let got = lookup(&t.field).unwrap_or("");
            (got == t.value) != t.negated
        })
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Split at the first unescaped occurrence of `op`.
fn split_op(s: &str, op: &str) -> Option<(String, String)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(op) {
            return Some((s[..i].to_string(), s[i + op.len()..].to_string()));
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parse_and_match_labels() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("", &[], true),
            ("app=web", &[("app", "web")], true),
            ("app==web", &[("app", "db")], false),
            ("app!=web", &[], true),
            ("app!=web", &[("app", "web")], false),
            ("app in (web, db)", &[("app", "db")], true),
            ("app notin (web,db)", &[("app", "cache")], true),
            ("app notin (web,db)", &[], true),
            ("app", &[("app", "")], true),
            ("!app", &[("app", "x")], false),
            ("app=web,tier", &[("app", "web")], false),
            ("app=web, tier", &[("app", "web"), ("tier", "1")], true),
            ("replicas>2", &[("replicas", "3")], true),
            ("replicas<2", &[("replicas", "3")], false),
            ("env=", &[("env", "")], true),
        ];
        for (sel, l, want) in cases {
            let s = LabelSelectorExpr::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&labels(l)), *want, "{sel} against {l:?}");
        }
    }

    #[test]
    fn reject_bad_label_selectors() {
        for bad in [
            "app in web",
            "app=(",
            "a b",
            "app in ()",
            "-x=1",
            "app=web,,",
        ] {
            assert!(
                LabelSelectorExpr::parse(bad).is_err(),
                "{bad} should not parse"
            );
        }
    }

    #[test]
    fn object_form_prints_sorted() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"tier": "web", "app": "shop"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]
        }))
        .unwrap();
        assert_eq!(describe(Some(&sel)), "app=shop,env in (dev,prod),tier=web");
        assert_eq!(describe(None), "<none>");
        assert!(
            !LabelSelectorExpr::from_object(None)
                .unwrap()
                .matches(&labels(&[]))
        );
        let empty = LabelSelector::default();
        assert!(
            LabelSelectorExpr::from_object(Some(&empty))
                .unwrap()
                .matches(&labels(&[]))
        );
    }

    #[test]
    fn field_selectors() {
        let s = FieldSelector::parse("metadata.name=web,status.phase!=Running").unwrap();
        assert_eq!(s.required_value("metadata.name"), Some("web"));
        let fields = |f: &str| match f {
            "metadata.name" => Some("web"),
            "status.phase" => Some("Pending"),
            _ => None,
        };
        assert!(s.matches(fields));
        let s = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert_eq!(s.terms[0].value, "a,b");
        assert!(FieldSelector::parse("nonsense").is_err());
        let s = FieldSelector::parse("spec.foo=1").unwrap();
        assert_eq!(
            s.check_supported(&["metadata.name"]),
            Err(SelectorError::UnsupportedField("spec.foo".into()))
        );
    }
}
