//! What a CEL rule may cost, by the model Kubernetes uses (cel-go's estimator): one unit per
//! identifier, field selection and ordinary call, string work at a tenth of a unit per
//! character, regular expressions by string length times pattern length, and loops by the
//! number of elements they may visit.
//!
//! The same walk serves twice. When a definition is written, sizes come from the schema
//! (`maxLength`, `maxItems`, `maxProperties`, or what a 3 MiB request could hold when they are
//! left out), and a rule whose estimate, times the number of places it applies, is over
//! budget is refused, as Kubernetes refuses it. When an object is validated, sizes come from
//! the object itself: a rule whose bound exceeds the per-call limit is not run, and one
//! object's rules share a total budget. The bound never undercounts, so what Kubernetes runs
//! within its limits is run here too unless short-circuiting alone kept Kubernetes under them.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::Value;

use super::schema::Schema;
use crate::errors::{FieldErrors, Path};

/// Kubernetes' `StaticEstimatedCostLimit`: one rule's estimate, times its places.
pub const PER_RULE_LIMIT: u64 = 10_000_000;
/// Kubernetes' `StaticEstimatedCRDCostLimit`: all rules of one schema together.
pub const PER_DEFINITION_LIMIT: u64 = 100_000_000;
/// Kubernetes' `PerCallLimit`: one evaluation.
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// Kubernetes' `RuntimeCELCostBudget`: every rule run for one object.
pub const PER_OBJECT_BUDGET: u64 = 10_000_000;
/// The largest request body, which bounds what a schema leaves unbounded.
const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;

/// What the estimator knows of a value.
#[derive(Clone, Debug)]
enum Shape<'a> {
    /// Described by a schema node (when a definition is written).
    Node(&'a Schema),
    /// Found in an object (when it is validated).
    Value(&'a Value),
    /// A list made by the rule, at most `max` long, of elements shaped like `elem`.
    List { max: u64, elem: Box<Shape<'a>> },
    /// Only a size: a literal, a scalar, a function's result.
    Size(u64),
    /// Nothing known: as large as anything the rule is given may be.
    Unknown,
}

fn min_json_size(s: &Schema) -> u64 {
    match s.ty.as_deref() {
        Some("string") => 2,
        Some("boolean") => 4,
        Some("object") | Some("array") => 2,
        _ => 1,
    }
}

impl<'a> Shape<'a> {
    /// At most how long (strings), how many elements (lists) or entries (maps) it is.
    fn size(&self, unknown: u64) -> u64 {
        match self {
            Shape::Node(s) => node_size(s),
            Shape::Value(v) => match v {
                Value::String(s) => s.chars().count() as u64,
                Value::Array(a) => a.len() as u64,
                Value::Object(m) => m.len() as u64,
                _ => 1,
            },
            Shape::List { max, .. } => *max,
            Shape::Size(n) => *n,
            Shape::Unknown => unknown,
        }
    }

    /// The value of field `name`.
    fn field(&self, name: &str) -> Shape<'a> {
        match self {
            Shape::Node(s) => match s.properties.get(name).or(s.additional.as_deref()) {
                Some(child) => Shape::Node(child),
                None => Shape::Unknown,
            },
            Shape::Value(v) => match v.get(name) {
                Some(child) => Shape::Value(child),
                None => Shape::Size(0),
            },
            _ => Shape::Unknown,
        }
    }

    /// What a loop over it visits: list elements, or map keys.
    fn element(&self) -> Shape<'a> {
        match self {
            Shape::Node(s) => match (&s.items, &s.additional) {
                (Some(items), _) => Shape::Node(items),
                (None, Some(_)) => Shape::Unknown,
                (None, None) => Shape::Size(
                    s.properties
                        .keys()
                        .map(|k| k.len() as u64)
                        .max()
                        .unwrap_or(0),
                ),
            },
            // The largest element stands for all of them.
            Shape::Value(Value::Array(items)) => items
                .iter()
                .max_by_key(|i| json_len(i))
                .map_or(Shape::Size(0), Shape::Value),
            Shape::Value(Value::Object(m)) => Shape::Size(
                m.keys()
                    .map(|k| k.chars().count() as u64)
                    .max()
                    .unwrap_or(0),
            ),
            Shape::List { elem, .. } => (**elem).clone(),
            _ => Shape::Unknown,
        }
    }

    /// An element by index or a map value by key.
    fn index(&self) -> Shape<'a> {
        match self {
            Shape::Node(s) => match (&s.items, &s.additional) {
                (Some(items), _) => Shape::Node(items),
                (None, Some(values)) => Shape::Node(values),
                _ => Shape::Unknown,
            },
            Shape::Value(Value::Array(items)) => items
                .iter()
                .max_by_key(|i| json_len(i))
                .map_or(Shape::Size(0), Shape::Value),
            Shape::Value(Value::Object(m)) => m
                .values()
                .max_by_key(|i| json_len(i))
                .map_or(Shape::Size(0), Shape::Value),
            other => other.element(),
        }
    }
}

fn json_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(json_len).sum::<usize>() + a.len(),
        Value::Object(m) => m.iter().map(|(k, v)| k.len() + json_len(v)).sum::<usize>() + m.len(),
        _ => 1,
    }
}

/// A schema node's largest size: declared, or what one request could hold.
fn node_size(s: &Schema) -> u64 {
    match s.ty.as_deref() {
        Some("string") => {
            if let Some(max) = s.max_length {
                return max.max(0) as u64;
            }
            let longest = s
                .enum_values
                .iter()
                .filter_map(Value::as_str)
                .map(|e| e.len() as u64);
            match longest.max() {
                Some(l) if !s.enum_values.is_empty() => l,
                _ => MAX_REQUEST_BYTES - 2,
            }
        }
        Some("array") => match s.max_items {
            Some(max) => max.max(0) as u64,
            None => {
                let each = s.items.as_deref().map_or(1, min_json_size);
                (MAX_REQUEST_BYTES - 2) / (each + 1)
            }
        },
        Some("object") => match (&s.additional, s.max_properties) {
            (_, Some(max)) => max.max(0) as u64,
            (Some(values), None) => (MAX_REQUEST_BYTES - 2) / (min_json_size(values) + 4),
            (None, None) if s.preserve_unknown => (MAX_REQUEST_BYTES - 2) / 5,
            (None, None) => s.properties.len() as u64,
        },
        None if s.int_or_string || s.preserve_unknown => MAX_REQUEST_BYTES - 2,
        _ => 1,
    }
}

/// cel-go's `MultiplyByCostFactor`: a fraction of a size, rounded up.
fn times(size: u64, factor: f64) -> u64 {
    let v = (size as f64 * factor).ceil();
    if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

/// Variables in scope: `self`, `oldSelf` and loop variables, innermost last.
struct Scope<'a> {
    vars: Vec<(String, Shape<'a>)>,
    /// The size taken for what nothing bounds.
    unknown: u64,
}

impl<'a> Scope<'a> {
    fn get(&self, name: &str) -> Shape<'a> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map_or(Shape::Unknown, |(_, s)| s.clone())
    }
}

/// The largest cost of `e`, and the shape of its result.
fn cost<'a>(e: &IdedExpr, scope: &mut Scope<'a>) -> (u64, Shape<'a>) {
    match &e.expr {
        Expr::Literal(l) => (
            0,
            Shape::Size(match l {
                LiteralValue::String(s) => s.inner().chars().count() as u64,
                LiteralValue::Bytes(b) => b.inner().len() as u64,
                _ => 1,
            }),
        ),
        Expr::Ident(name) => (1, scope.get(name)),
        Expr::Select(sel) => {
            let (c, operand) = cost(&sel.operand, scope);
            if sel.test {
                (c.saturating_add(1), Shape::Size(1))
            } else {
                (c.saturating_add(1), operand.field(&sel.field))
            }
        }
        Expr::List(list) => {
            let mut total: u64 = 10;
            let mut elem = Shape::Size(0);
            for el in &list.elements {
                let (c, s) = cost(el, scope);
                total = total.saturating_add(c);
                if s.size(scope.unknown) >= elem.size(scope.unknown) {
                    elem = s;
                }
            }
            (
                total,
                Shape::List {
                    max: list.elements.len() as u64,
                    elem: Box::new(elem),
                },
            )
        }
        Expr::Map(map) => {
            let mut total: u64 = 30;
            for entry in &map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(m) = &entry.expr {
                    total = total
                        .saturating_add(cost(&m.key, scope).0)
                        .saturating_add(cost(&m.value, scope).0);
                }
            }
            (total, Shape::Size(map.entries.len() as u64))
        }
        Expr::Struct(st) => {
            let mut total: u64 = 40;
            for entry in &st.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                    total = total.saturating_add(cost(&f.value, scope).0);
                }
            }
            (total, Shape::Size(st.entries.len() as u64))
        }
        Expr::Comprehension(c) => {
            let (range_cost, range) = cost(&c.iter_range, scope);
            let (init_cost, init) = cost(&c.accu_init, scope);
            let builds_list = matches!(c.accu_init.expr, Expr::List(_));
            scope.vars.push((c.accu_var.clone(), init));
            match &c.iter_var2 {
                Some(second) => {
                    scope.vars.push((c.iter_var.clone(), range.element()));
                    scope.vars.push((second.clone(), range.index()));
                }
                None => scope.vars.push((c.iter_var.clone(), range.element())),
            }
            let (cond_cost, _) = cost(&c.loop_cond, scope);
            let (step_cost, step) = cost(&c.loop_step, scope);
            scope.vars.pop();
            if c.iter_var2.is_some() {
                scope.vars.pop();
            }
            let (result_cost, result) = cost(&c.result, scope);
            scope.vars.pop();
            let count = range.size(scope.unknown);
            let loops = count.saturating_mul(cond_cost.saturating_add(step_cost));
            let total = range_cost
                .saturating_add(init_cost)
                .saturating_add(loops)
                .saturating_add(result_cost);
            let shape = if builds_list {
                // map() and filter(): as many elements as the range, shaped by the step.
                Shape::List {
                    max: count,
                    elem: Box::new(step.element()),
                }
            } else {
                result
            };
            (total, shape)
        }
        Expr::Call(call) => {
            let target = call.target.as_deref().map(|t| cost(t, scope));
            let args: Vec<(u64, Shape<'a>)> = call.args.iter().map(|a| cost(a, scope)).collect();
            let arg_sum = args
                .iter()
                .map(|(c, _)| *c)
                .chain(target.as_ref().map(|(c, _)| *c))
                .fold(0u64, u64::saturating_add);
            let unknown = scope.unknown;
            let size = |i: usize| args.get(i).map_or(0, |(_, s)| s.size(unknown));
            let target_size = target.as_ref().map(|(_, s)| s.size(unknown));
            let (own, shape) = match call.func_name.as_str() {
                "_&&_" | "_||_" => (0, Shape::Size(1)),
                "_?_:_" => {
                    let (a, b) = (&args[1], &args[2]);
                    let shape = if a.1.size(unknown) >= b.1.size(unknown) {
                        a.1.clone()
                    } else {
                        b.1.clone()
                    };
                    // Only one branch runs: the dearer one counts.
                    let branches = a.0.max(b.0);
                    return (args[0].0.saturating_add(branches), shape);
                }
                "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
                    (times(size(0).min(size(1)), 0.1).max(1), Shape::Size(1))
                }
                "@in" => (size(1), Shape::Size(1)),
                "_+_" => {
                    let joined = size(0).saturating_add(size(1));
                    let shape = match (&args[0].1, &args[1].1) {
                        (Shape::List { elem, .. }, _) | (_, Shape::List { elem, .. }) => {
                            Shape::List {
                                max: joined,
                                elem: elem.clone(),
                            }
                        }
                        _ => Shape::Size(joined),
                    };
                    (times(joined, 0.1).max(1), shape)
                }
                "_[_]" => (1, args.first().map_or(Shape::Size(0), |(_, s)| s.index())),
                "contains" => match target_size {
                    Some(t) => (
                        times(t, 0.1).saturating_mul(times(size(0), 0.1)),
                        Shape::Size(1),
                    ),
                    None => (1, Shape::Size(1)),
                },
                "startsWith" | "endsWith" => (times(size(0), 0.1), Shape::Size(1)),
                "matches" => {
                    let (text, pattern) = match target_size {
                        Some(t) => (t, size(0)),
                        None => (size(0), size(1)),
                    };
                    (
                        times(text.saturating_add(1), 0.1).saturating_mul(times(pattern, 0.25)),
                        Shape::Size(1),
                    )
                }
                // Kubernetes' string library: one pass over the string.
                "lowerAscii" | "upperAscii" | "trim" | "replace" | "split" | "substring"
                | "indexOf" | "lastIndexOf" | "charAt" | "reverse" => {
                    let t = target_size.unwrap_or(0);
                    (times(t, 0.1).max(1), Shape::Size(t))
                }
                // Kubernetes' list library and parsers: one pass over the list or string.
                "isSorted" | "sum" | "min" | "max" | "join" | "url" | "isURL" | "quantity"
                | "isQuantity" | "ip" | "isIP" | "cidr" | "isCIDR" => {
                    let t = target_size.unwrap_or_else(|| size(0));
                    (t.max(1), Shape::Size(t))
                }
                "size" => (1, Shape::Size(1)),
                _ => (1, Shape::Unknown),
            };
            (own.saturating_add(arg_sum), shape)
        }
        Expr::Unspecified => (0, Shape::Size(0)),
    }
}

/// A rule's largest cost on a value described by `schema` (as a definition is checked).
pub fn estimate(rule: &IdedExpr, schema: &Schema) -> u64 {
    let mut scope = Scope {
        vars: vec![
            ("self".into(), Shape::Node(schema)),
            ("oldSelf".into(), Shape::Node(schema)),
        ],
        unknown: MAX_REQUEST_BYTES,
    };
    cost(rule, &mut scope).0
}

/// A bound on a rule's cost on `v` (and `old`), as an object is checked.
pub fn bound(rule: &IdedExpr, v: &Value, old: Option<&Value>) -> u64 {
    let null = Value::Null;
    let mut scope = Scope {
        vars: vec![
            ("self".into(), Shape::Value(v)),
            ("oldSelf".into(), Shape::Value(old.unwrap_or(&null))),
        ],
        // What a function makes of the object is taken to be as large as the object.
        unknown: json_len(v).max(old.map_or(0, json_len)) as u64,
    };
    cost(rule, &mut scope).0
}

/// Kubernetes' words for how far over its limit a cost is.
fn over(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let shown = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {shown} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// Refuse the rules of a definition's schema that may cost more than Kubernetes allows, one
/// by one and all together. `path` names the schema's root.
pub fn check(root: &Schema, path: &Path, errs: &mut FieldErrors) {
    let mut total: u64 = 0;
    walk(root, path, 1, &mut total, errs);
    if total > PER_DEFINITION_LIMIT {
        errs.forbidden(
            path,
            over(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                total,
                PER_DEFINITION_LIMIT,
            ),
        );
    }
}

fn walk(s: &Schema, path: &Path, places: u64, total: &mut u64, errs: &mut FieldErrors) {
    for (i, rule) in s.rules.iter().enumerate() {
        let cost = estimate(rule.expression(), s).saturating_mul(places);
        if cost > PER_RULE_LIMIT {
            errs.forbidden(
                &path
                    .child("x-kubernetes-validations")
                    .index(i)
                    .child("rule"),
                over("estimated rule cost", cost, PER_RULE_LIMIT),
            );
        }
        *total = total.saturating_add(cost);
    }
    for (name, child) in &s.properties {
        walk(
            child,
            &path.child("properties").key(name),
            places,
            total,
            errs,
        );
    }
    let many = places.saturating_mul(node_size(s));
    if let Some(items) = &s.items {
        walk(items, &path.child("items"), many, total, errs);
    }
    if let Some(values) = &s.additional {
        walk(
            values,
            &path.child("additionalProperties"),
            many,
            total,
            errs,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    use serde_json::json;

    fn schema(v: Value) -> Schema {
        let props: JSONSchemaProps = serde_json::from_value(v).expect("schema");
        let mut errs = FieldErrors::default();
        let s = super::super::schema::compile(&props, &Path::root("s"), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        s
    }

    fn errors(v: Value) -> Vec<String> {
        let mut errs = FieldErrors::default();
        check(
            &schema(v),
            &Path::root("spec").child("openAPIV3Schema"),
            &mut errs,
        );
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    fn rule(text: &str) -> cel::Program {
        cel::Program::compile(text).expect("rule")
    }

    #[test]
    fn unbounded_loops_over_unbounded_strings_are_refused_and_bounds_let_them_in() {
        let unbounded = json!({"type": "object", "properties": {"names": {
            "type": "array", "items": {"type": "string"}}},
            "x-kubernetes-validations": [{"rule": "self.names.all(n, n.matches('^[a-z]+$'))"}]});
        let errs = errors(unbounded);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with(
            "spec.openAPIV3Schema.x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x"
        ), "{errs:?}");
        assert!(errs[1].contains("estimated rule cost total for entire OpenAPIv3 schema"));
        let bounded = json!({"type": "object", "properties": {"names": {
            "type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 64}}},
            "x-kubernetes-validations": [{"rule": "self.names.all(n, n.matches('^[a-z]+$'))"}]});
        assert!(errors(bounded).is_empty());
    }

    #[test]
    fn a_rule_under_an_unbounded_list_counts_once_per_element() {
        // Cheap alone, but it applies to each of ~1M possible items of an unbounded list.
        let s = json!({"type": "object", "properties": {"items": {
            "type": "array", "items": {"type": "object",
                "properties": {"name": {"type": "string", "maxLength": 253}},
                "x-kubernetes-validations": [{"rule": "self.name.startsWith('a') && self.name.contains('bcdefghijklmnop')"}]}}}});
        let errs = errors(s);
        assert!(!errs.is_empty());
        assert!(
            errs[0].contains("properties[items].items.x-kubernetes-validations[0].rule"),
            "{errs:?}"
        );
    }

    #[test]
    fn ordinary_rules_cost_little() {
        let s = schema(json!({"type": "object", "properties": {
            "replicas": {"type": "integer"}, "min": {"type": "integer"}}}));
        let r = rule("self.replicas >= self.min && has(self.min)");
        assert!(estimate(r.expression(), &s) < 20);
    }

    #[test]
    fn the_bound_on_an_object_follows_its_actual_sizes() {
        let r = rule("self.names.all(n, n.contains('x'))");
        let small = json!({"names": ["a", "b"]});
        let big = json!({"names": vec!["y".repeat(10_000); 2_000]});
        assert!(bound(r.expression(), &small, None) < 50);
        assert!(bound(r.expression(), &big, None) > PER_CALL_LIMIT);
    }

    #[test]
    fn the_factor_is_shown_as_kubernetes_shows_it() {
        assert!(over("c", 54, 10).contains("by factor of 5.4x"));
        assert!(over("c", 12, 10).contains("by factor of 1.200000x"));
        assert!(over("c", 10_000, 10).contains("by factor of more than 100x"));
    }
}
