//! `x-kubernetes-validations`: CEL rules on a schema node, with `self` bound to the value there
//! and `oldSelf` to the stored value on update (a rule naming `oldSelf` is a transition rule
//! and is not checked on create, or where no old value corresponds).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use cel::{Context, Program};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
use serde_json::Value;

use crate::errors::{FieldErrors, Path};

/// One compiled rule.
pub struct Rule {
    pub text: String,
    program: Program,
    message: Option<String>,
    message_expression: Option<Program>,
    field_path: Option<String>,
    reason: Option<String>,
    transition: bool,
    optional_old_self: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule({:?})", self.text)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(String);

/// The longest rule text accepted.
const MAX_RULE_SOURCE: usize = 8 * 1024;

/// What the rules run for one object may still cost between them.
#[derive(Debug)]
pub struct Budget {
    left: u64,
    spent: bool,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            left: super::cost::PER_OBJECT_BUDGET,
            spent: false,
        }
    }
}

/// A value's type as Kubernetes names it in a rule's error (`"object"`, `"string"`, ...).
fn shown_type(v: &Value) -> String {
    let t = match v {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::Null => "null",
    };
    format!("{t:?}")
}

/// Evaluate a webhook's `matchConditions` expression with `object`, `oldObject` and
/// `request` bound (absent objects are null).
pub fn evaluate_condition(
    expression: &str,
    object: Option<&Value>,
    old: Option<&Value>,
    request: &Value,
) -> Result<bool, String> {
    let program = compiled(expression)?;
    let mut ctx = super::celib::root().new_inner_scope();
    ctx.add_variable_from_value("object", object.map_or(cel::Value::Null, to_cel));
    ctx.add_variable_from_value("oldObject", old.map_or(cel::Value::Null, to_cel));
    ctx.add_variable_from_value("request", to_cel(request));
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "the expression returned {:?}, not a bool",
            other.type_of()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Expressions of policies and match conditions, compiled once: they are evaluated on every
/// write they choose, from the text their configuration holds.
fn compiled(expression: &str) -> Result<Arc<Program>, String> {
    static PROGRAMS: LazyLock<Mutex<HashMap<String, Arc<Program>>>> =
        LazyLock::new(Default::default);
    let mut programs = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = programs.get(expression) {
        return Ok(p.clone());
    }
    let p = Arc::new(Program::compile(expression).map_err(|e| e.to_string())?);
    // Configurations come and go; forgetting everything now and then bounds the memory.
    if programs.len() >= 4096 {
        programs.clear();
    }
    programs.insert(expression.to_string(), p.clone());
    Ok(p)
}

/// Whether `expression` parses as CEL and calls only functions that exist (checked when a
/// policy is written).
pub fn check_syntax(expression: &str) -> Result<(), String> {
    let p = Program::compile(expression).map_err(|e| e.to_string())?;
    known_functions(&p).map_err(|e| e.0)
}

/// The standard library's functions (macros are expanded before this is asked).
const STANDARD: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "dyn",
    "type",
    "duration",
    "timestamp",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "hasValue",
    "value",
    "or",
    "orValue",
    "optional.none",
    "optional.of",
    "optional.ofNonZeroValue",
];

/// Refuse a program that calls a function neither library has, as Kubernetes' type check
/// does, instead of failing on every object later.
fn known_functions(p: &Program) -> Result<(), CompileError> {
    for f in p.references().functions() {
        let operator = !f.starts_with(|c: char| c.is_ascii_alphabetic());
        if !operator && !STANDARD.contains(&f) && !super::celib::FUNCTIONS.contains(&f) {
            return Err(CompileError(format!(
                "ERROR: <input>: undeclared reference to '{f}' (in container '')"
            )));
        }
    }
    Ok(())
}

/// Evaluate `expression` with `vars` bound; the result as JSON (what policies' validations,
/// variables and message expressions need).
pub fn evaluate(expression: &str, vars: &[(String, Value)]) -> Result<Value, String> {
    let program = compiled(expression)?;
    let mut ctx = super::celib::root().new_inner_scope();
    for (name, v) in vars {
        ctx.add_variable_from_value(name.as_str(), to_cel(v));
    }
    program
        .execute(&ctx)
        .map(|v| from_cel(&v))
        .map_err(|e| e.to_string())
}

/// A CEL value as JSON (durations and timestamps as text).
fn from_cel(v: &cel::Value) -> Value {
    match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::from(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        cel::Value::String(s) => Value::String(s.to_string()),
        cel::Value::List(items) => Value::Array(items.iter().map(from_cel).collect()),
        cel::Value::Map(m) => Value::Object(
            m.map
                .iter()
                .map(|(k, v)| (k.to_string(), from_cel(v)))
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

/// A JSON value as CEL sees it: integers are `int` (CEL's `100` is an int, and arithmetic
/// does not mix int and uint), objects are maps with string keys.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

impl Rule {
    pub fn compile(r: &ValidationRule) -> Result<Rule, CompileError> {
        if r.rule.len() > MAX_RULE_SOURCE {
            return Err(CompileError(format!(
                "rule is longer than {MAX_RULE_SOURCE} bytes"
            )));
        }
        let program = Program::compile(&r.rule).map_err(|e| CompileError(e.to_string()))?;
        known_functions(&program)?;
        let transition = program.references().has_variable("oldSelf");
        let message_expression = match &r.message_expression {
            Some(m) if !m.is_empty() => {
                let p = Program::compile(m).map_err(|e| CompileError(e.to_string()))?;
                known_functions(&p)?;
                Some(p)
            }
            _ => None,
        };
        Ok(Rule {
            text: r.rule.clone(),
            program,
            message: r.message.clone().filter(|m| !m.is_empty()),
            message_expression,
            field_path: r.field_path.clone().filter(|p| !p.is_empty()),
            reason: r.reason.clone(),
            transition,
            optional_old_self: r.optional_old_self.unwrap_or(false),
        })
    }

    /// The rule's syntax tree (for its cost).
    pub fn expression(&self) -> &cel::IdedExpr {
        self.program.expression()
    }

    /// Check `v` (with `old`, the correlated stored value) and report a failure at `path`.
    /// The rule is run only if a bound on its cost on `v` is within the per-call limit and
    /// the object's remaining `budget`, which it then draws from.
    pub fn check(
        &self,
        v: &Value,
        old: Option<&Value>,
        budget: &mut Budget,
        path: &Path,
        errs: &mut FieldErrors,
    ) {
        if self.transition && old.is_none() && !self.optional_old_self {
            return;
        }
        if budget.spent {
            return;
        }
        let bound = super::cost::bound(self.expression(), v, old);
        if bound > budget.left {
            budget.spent = true;
            errs.invalid_rendered(
                path,
                shown_type(v),
                "validation failed due to running out of cost budget, no further validation rules will be run",
            );
            return;
        }
        budget.left -= bound;
        if bound > super::cost::PER_CALL_LIMIT {
            errs.invalid_rendered(
                path,
                shown_type(v),
                format!("call cost exceeds limit for rule: {}", self.text),
            );
            return;
        }
        let mut ctx = super::celib::root().new_inner_scope();
        ctx.add_variable_from_value("self", to_cel(v));
        if self.transition {
            ctx.add_variable_from_value("oldSelf", old.map_or(cel::Value::Null, to_cel));
        }
        let at = match &self.field_path {
            Some(fp) => Path::root(&format!("{}{}", path.as_str(), fp)),
            None => path.clone(),
        };
        let shown = match v {
            Value::Object(_) => "\"object\"".to_string(),
            Value::Array(_) => "\"array\"".to_string(),
            other => super::schema::render(other),
        };
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => {
                let message = self.message_of(&ctx);
                if self.reason.as_deref() == Some("FieldValueForbidden") {
                    errs.forbidden(&at, message);
                } else if self.reason.as_deref() == Some("FieldValueRequired") {
                    errs.required(&at, message);
                } else {
                    errs.invalid_rendered(&at, shown, message);
                }
            }
            Ok(other) => errs.invalid_rendered(
                &at,
                shown,
                format!(
                    "rule compile error: rule returned {:?}, not a bool: {}",
                    other.type_of(),
                    self.text
                ),
            ),
            Err(e) => errs.invalid_rendered(
                &at,
                shown,
                format!("rule evaluation error: {e}: {}", self.text),
            ),
        }
    }

    fn message_of(&self, ctx: &Context) -> String {
        if let Some(m) = &self.message_expression
            && let Ok(cel::Value::String(s)) = m.execute(ctx)
            && !s.trim().is_empty()
        {
            return s.to_string();
        }
        match &self.message {
            Some(m) => m.clone(),
            None => format!("failed rule: {}", self.text),
        }
    }
}
