//! CEL conditions: compiled once when written, evaluated per request.
//!
//! The `cel` crate parses and interprets but does not type-check, so this
//! module adds a small static checker over its AST: it rejects references to
//! variables that do not exist, unknown functions, wrong arities, and
//! operators applied to types that can never support them (`subject + 1`,
//! `now < 'x'`), each with its line and column. Values read from `context`
//! are dynamic, so anything involving them is left to run time, where an
//! error fails closed (see [the decision rules](crate::engine) for what that means for ALLOW and DENY).
//!
//! Variables: `subject`, `action`, `resource` (strings), `context` (the
//! request's attributes, a map) and `now` (a timestamp).
//!
//! Numbers in a request context arrive as JSON numbers; integral values are
//! given to CEL as `int`, others as `double`, so `context.level >= 3` reads
//! naturally.

use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{CelString, CelTimestamp};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value};

use super::cost::{self, Budget};

pub const MAX_SOURCE_CHARS: usize = 4096;
const MAX_DEPTH: usize = 100;
const MAX_NESTING: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ConditionError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// A compiled condition. Cheap to share; evaluation never re-parses.
pub struct Condition {
    source: Arc<str>,
    /// The expression as written, with its comprehensions charging the
    /// evaluation budget (see [`cost`]).
    instrumented: cel::IdedExpr,
    /// What one evaluation costs before any comprehension iterates.
    weight: cost::Weight,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Condition({:?})", &*self.source)
    }
}

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        env.add_overload(
            cost::BUDGET_FN,
            "portcullis_budget_int",
            vec![cel::common::types::INT_TYPE, cel::common::types::INT_TYPE],
            cost::budget_fn,
        )
        .expect("the budget function is declared once");
        Arc::new(env)
    })
}

/// Regular expressions in conditions: compiled size and nesting bounded,
/// so a pattern cannot cost more than its text.
const MAX_REGEX_BYTES: usize = 64 * 1024;

fn regex_error(pattern: &str) -> Option<String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .nest_limit(32)
        .build()
        .err()
        .map(|e| match e {
            regex::Error::CompiledTooBig(_) => format!("regular expression {pattern:?} is too large"),
            e => format!(
                "invalid regular expression {pattern:?}: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
        })
}

/// The stack a compilation runs on. The CEL parser recurses deeply on some
/// malformed input (unclosed macro calls: over 1.5 MiB for 150 characters
/// in a debug build), which would abort the whole process on a 2 MiB
/// thread; compiling on a stack of its own makes any accepted length safe.
const COMPILE_STACK: usize = 64 << 20;

impl Condition {
    pub fn compile(source: &str) -> Result<Condition, ConditionError> {
        stacker::grow(COMPILE_STACK, || Self::compile_here(source))
    }

    fn compile_here(source: &str) -> Result<Condition, ConditionError> {
        let at_start = |message: String| ConditionError {
            line: 1,
            column: 1,
            message,
        };
        if source.trim().is_empty() {
            return Err(at_start("a condition must not be empty".into()));
        }
        if source.chars().count() > MAX_SOURCE_CHARS {
            return Err(at_start(format!(
                "a condition must be at most {MAX_SOURCE_CHARS} characters"
            )));
        }
        if let Some(pos) = nesting_overflow(source) {
            let (line, column) = line_col(source, pos);
            return Err(ConditionError {
                line,
                column,
                message: format!("brackets nested more than {MAX_NESTING} deep"),
            });
        }
        let program = env().compile(source).map_err(|errs| match errs.errors.first() {
            Some(e) => ConditionError {
                line: e.pos.0.max(1) as u32,
                column: (e.pos.1 + 1).max(1) as u32,
                message: format!("syntax error: {}", e.msg),
            },
            None => at_start("syntax error".into()),
        })?;
        let checker = Checker {
            program: &program,
            source,
        };
        let ty = checker.check(program.expression(), &mut Vec::new(), 0)?;
        if !matches!(ty, Ty::Bool | Ty::Dyn) {
            return Err(checker.error(
                program.expression().id,
                format!("a condition must be a bool expression, this one is {}", ty.name()),
            ));
        }
        let est = cost::estimate(program.expression());
        if est.nesting > cost::MAX_COMPREHENSION_NESTING {
            return Err(checker.error(
                first_comprehension(program.expression()).unwrap_or(program.expression().id),
                format!(
                    "comprehensions (all, exists, exists_one, map, filter) nested {} deep; at most {} may nest",
                    est.nesting,
                    cost::MAX_COMPREHENSION_NESTING
                ),
            ));
        }
        let worst = cost::worst_steps(&est);
        if worst > cost::MAX_STATIC_COST {
            return Err(checker.error(
                first_comprehension(program.expression()).unwrap_or(program.expression().id),
                format!(
                    "this condition may cost up to {worst} evaluation steps with a context of {}-element lists, over the limit of {}; iterate over fewer or smaller lists",
                    cost::MAX_CONTEXT_LIST,
                    cost::MAX_STATIC_COST
                ),
            ));
        }
        let mut instrumented = program.expression().clone();
        cost::instrument(&mut instrumented);
        Ok(Condition {
            source: source.into(),
            weight: cost::static_weight(program.expression()),
            instrumented,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against one request, within the request's budget. `Err`
    /// carries a message for explanations; callers decide what an error
    /// means (it never means "allow").
    pub fn eval(&self, vars: &Vars<'_>) -> Result<bool, String> {
        let budget = vars.context.budget();
        let run = budget.run(self.weight, || {
            let mut ctx = Context::with_env(env().clone());
            ctx.set_variable_resolver(vars);
            Value::resolve(&self.instrumented, &ctx)
        });
        match run {
            Err(e) => Err(e.to_string()),
            Ok(Ok(Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("evaluated to {:?}, not a bool", other.type_of())),
            Ok(Err(_)) if budget.exhausted() => Err(cost::EXHAUSTED.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }
}

/// The variables of one request, built once and shared by every condition
/// the request evaluates.
pub struct Vars<'a> {
    pub subject: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub context: &'a RequestContext,
    pub now: CelTimestamp,
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "subject" => Some(CowVal::owned(CelString::from(self.subject))),
            "action" => Some(CowVal::owned(CelString::from(self.action))),
            "resource" => Some(CowVal::owned(CelString::from(self.resource))),
            "now" => Some(CowVal::Borrowed(&self.now)),
            "context" => Some(CowVal::Borrowed(self.context.val())),
            _ => None,
        }
    }
}

pub fn cel_timestamp(t: super::model::Timestamp) -> CelTimestamp {
    CelTimestamp::from(t.to_chrono().fixed_offset())
}

fn first_comprehension(e: &cel::IdedExpr) -> Option<u64> {
    use cel::common::ast::Expr as E;
    match &e.expr {
        E::Comprehension(_) => Some(e.id),
        E::Call(c) => c
            .target
            .iter()
            .map(|t| &**t)
            .chain(c.args.iter())
            .find_map(first_comprehension),
        E::Select(s) => first_comprehension(&s.operand),
        E::List(l) => l.elements.iter().find_map(first_comprehension),
        _ => None,
    }
}

/// A request's attributes, converted to CEL once, on first use, so requests
/// whose conditions never run pay nothing; and the evaluation budget its
/// conditions share.
#[derive(Default)]
pub struct RequestContext {
    json: serde_json::Map<String, serde_json::Value>,
    cel: OnceLock<Box<dyn Val>>,
    budget: Budget,
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestContext({:?})", self.json)
    }
}

impl Clone for RequestContext {
    /// The same attributes with a fresh budget of the same size.
    fn clone(&self) -> Self {
        RequestContext::new(self.json.clone()).with_budget(self.budget.limit())
    }
}

impl RequestContext {
    pub fn new(json: serde_json::Map<String, serde_json::Value>) -> RequestContext {
        let l = longest_collection(&json);
        RequestContext {
            json,
            cel: OnceLock::new(),
            budget: Budget::default().for_context(l),
        }
    }
    /// The same context with a budget of `limit` (see [`cost`]).
    pub fn with_budget(mut self, limit: i64) -> RequestContext {
        self.budget = Budget::new(limit).for_context(self.budget.longest());
        self
    }
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
    pub fn empty() -> RequestContext {
        RequestContext::default()
    }
    pub fn json(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.json
    }
    /// The context as it was given, once nothing evaluates it any more.
    pub fn into_json(self) -> serde_json::Map<String, serde_json::Value> {
        self.json
    }
    fn val(&self) -> &dyn Val {
        &**self.cel.get_or_init(|| {
            let map: std::collections::HashMap<String, Value> =
                self.json.iter().map(|(k, v)| (k.clone(), json_to_cel(v))).collect();
            let val: Result<Box<dyn Val>, _> = Value::from(map).try_into();
            val.unwrap_or_else(|_| Box::new(cel::common::types::CelNull))
        })
    }
}

/// The longest list or map anywhere in a context: the `L` its conditions
/// are charged at.
fn longest_collection(m: &serde_json::Map<String, serde_json::Value>) -> u64 {
    fn go(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::Array(a) => a.iter().map(go).max().unwrap_or(0).max(a.len() as u64),
            serde_json::Value::Object(o) => o.values().map(go).max().unwrap_or(0).max(o.len() as u64),
            _ => 0,
        }
    }
    m.values().map(go).max().unwrap_or(0).max(m.len() as u64)
}

fn json_to_cel(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    Value::Int(f as i64)
                } else {
                    Value::Float(f)
                }
            } else {
                Value::Null
            }
        }
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        J::Object(o) => {
            let map: std::collections::HashMap<String, Value> =
                o.iter().map(|(k, v)| (k.clone(), json_to_cel(v))).collect();
            Value::from(map)
        }
    }
}

fn line_col(source: &str, byte: usize) -> (u32, u32) {
    let byte = byte.min(source.len());
    let before = &source[..source.floor_char_boundary(byte)];
    let line = before.matches('\n').count() as u32 + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) as u32 + 1;
    (line, col)
}

fn nesting_overflow(source: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in source.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(i);
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    Timestamp,
    Duration,
    List,
    Map,
    Type,
    Dyn,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::Uint => "uint",
            Ty::Double => "double",
            Ty::String => "string",
            Ty::Bytes => "bytes",
            Ty::Null => "null",
            Ty::Timestamp => "timestamp",
            Ty::Duration => "duration",
            Ty::List => "list",
            Ty::Map => "map",
            Ty::Type => "type",
            Ty::Dyn => "dyn",
        }
    }
    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }
}

struct Checker<'a> {
    program: &'a Program,
    source: &'a str,
}

type CheckResult = Result<Ty, ConditionError>;

const VARIABLES_HELP: &str = "conditions can use subject, action, resource, context and now";

impl Checker<'_> {
    fn error(&self, id: u64, message: String) -> ConditionError {
        let (line, column) = match self.program.source_info().offset_for(id) {
            Some((start, _)) => line_col(self.source, start as usize),
            None => (1, 1),
        };
        ConditionError { line, column, message }
    }

    fn check(&self, e: &IdedExpr, locals: &mut Vec<String>, depth: usize) -> CheckResult {
        if depth > MAX_DEPTH {
            return Err(self.error(e.id, format!("expression nested more than {MAX_DEPTH} deep")));
        }
        let d = depth + 1;
        match &e.expr {
            Expr::Unspecified => Err(self.error(e.id, "incomplete expression".into())),
            Expr::Literal(l) => Ok(match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            }),
            Expr::Ident(name) => {
                if locals.iter().any(|l| l == name) {
                    return Ok(Ty::Dyn);
                }
                match name.as_str() {
                    "subject" | "action" | "resource" => Ok(Ty::String),
                    "context" => Ok(Ty::Map),
                    "now" => Ok(Ty::Timestamp),
                    "int" | "uint" | "double" | "string" | "bool" | "bytes" | "list" | "map" | "null_type" | "type" => {
                        Ok(Ty::Type)
                    }
                    _ => Err(self.error(e.id, format!("undeclared reference to '{name}' ({VARIABLES_HELP})"))),
                }
            }
            Expr::Select(s) => {
                let t = self.check(&s.operand, locals, d)?;
                match t {
                    Ty::Map | Ty::Dyn => Ok(if s.test { Ty::Bool } else { Ty::Dyn }),
                    other => Err(self.error(
                        e.id,
                        format!(
                            "cannot select field '{}' from a value of type {}",
                            s.field,
                            other.name()
                        ),
                    )),
                }
            }
            Expr::List(l) => {
                for el in &l.elements {
                    self.check(el, locals, d)?;
                }
                Ok(Ty::List)
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.check(&me.key, locals, d)?;
                            self.check(&me.value, locals, d)?;
                        }
                        EntryExpr::StructField(_) => {
                            return Err(self.error(entry.id, "message fields are not supported".into()));
                        }
                    }
                }
                Ok(Ty::Map)
            }
            Expr::Struct(s) => Err(self.error(
                e.id,
                format!("message construction ('{}{{...}}') is not supported", s.type_name),
            )),
            Expr::Comprehension(c) => {
                let range = self.check(&c.iter_range, locals, d)?;
                if !matches!(range, Ty::List | Ty::Map | Ty::Dyn) {
                    return Err(self.error(
                        c.iter_range.id,
                        format!("cannot iterate over a value of type {}", range.name()),
                    ));
                }
                self.check(&c.accu_init, locals, d)?;
                let mark = locals.len();
                locals.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    locals.push(v2.clone());
                }
                locals.push(c.accu_var.clone());
                let r = (|| {
                    self.check(&c.loop_cond, locals, d)?;
                    self.check(&c.loop_step, locals, d)?;
                    self.check(&c.result, locals, d)
                })();
                locals.truncate(mark);
                r.map(|t| if t == Ty::Bool { Ty::Bool } else { Ty::Dyn })
            }
            Expr::Call(call) => self.check_call(e, call, locals, d),
        }
    }

    /// A literal pattern is compiled now, so a bad one is refused when
    /// written rather than failing every check.
    fn check_regex_literal(&self, e: &IdedExpr) -> Result<(), ConditionError> {
        if let Expr::Literal(LiteralValue::String(p)) = &e.expr
            && let Some(msg) = regex_error(p)
        {
            return Err(self.error(e.id, msg));
        }
        Ok(())
    }

    fn check_call(
        &self,
        e: &IdedExpr,
        call: &cel::common::ast::CallExpr,
        locals: &mut Vec<String>,
        d: usize,
    ) -> CheckResult {
        let name = call.func_name.as_str();
        let target = match &call.target {
            Some(t) => Some(self.check(t, locals, d)?),
            None => None,
        };
        let mut args = Vec::with_capacity(call.args.len());
        for a in &call.args {
            args.push(self.check(a, locals, d)?);
        }
        let op = |sym: &str| sym.to_string();
        let mismatch = |sym: String, a: Ty, b: Ty| {
            self.error(e.id, format!("no operator '{sym}' for {} and {}", a.name(), b.name()))
        };
        let known = |t: Ty| t != Ty::Dyn;
        let arity = |n: usize| -> Result<(), ConditionError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(self.error(e.id, format!("'{name}' takes {n} argument(s), got {}", args.len())))
            }
        };
        let want = |i: usize, allowed: &[Ty]| -> Result<(), ConditionError> {
            let t = args[i];
            if t == Ty::Dyn || allowed.contains(&t) {
                Ok(())
            } else {
                Err(self.error(
                    call.args[i].id,
                    format!("'{name}' does not accept an argument of type {}", t.name()),
                ))
            }
        };
        match (name, target) {
            ("_&&_" | "_||_", None) => {
                for (i, a) in args.iter().enumerate() {
                    if !matches!(a, Ty::Bool | Ty::Dyn) {
                        return Err(self.error(
                            call.args[i].id,
                            format!("logical operators need bool operands, got {}", a.name()),
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            ("!_", None) => {
                arity(1)?;
                want(0, &[Ty::Bool])?;
                Ok(Ty::Bool)
            }
            ("@not_strictly_false", None) => Ok(Ty::Bool),
            ("_?_:_", None) => {
                arity(3)?;
                want(0, &[Ty::Bool])?;
                Ok(if args[1] == args[2] { args[1] } else { Ty::Dyn })
            }
            ("_==_" | "_!=_", None) => {
                arity(2)?;
                let (a, b) = (args[0], args[1]);
                if known(a) && known(b) && a != b && !(a.numeric() && b.numeric()) && a != Ty::Null && b != Ty::Null {
                    return Err(mismatch(op(&name[1..3]), a, b));
                }
                Ok(Ty::Bool)
            }
            ("_<_" | "_<=_" | "_>_" | "_>=_", None) => {
                arity(2)?;
                let (a, b) = (args[0], args[1]);
                let orderable = |t: Ty| {
                    t.numeric() || matches!(t, Ty::String | Ty::Bytes | Ty::Bool | Ty::Timestamp | Ty::Duration)
                };
                let sym = name.trim_matches('_');
                for t in [a, b] {
                    if known(t) && !orderable(t) {
                        return Err(mismatch(op(sym), a, b));
                    }
                }
                if known(a) && known(b) && a != b && !(a.numeric() && b.numeric()) {
                    return Err(mismatch(op(sym), a, b));
                }
                Ok(Ty::Bool)
            }
            ("_+_" | "_-_" | "_*_" | "_/_" | "_%_", None) => {
                arity(2)?;
                let (a, b) = (args[0], args[1]);
                let sym = name.trim_matches('_');
                if !known(a) || !known(b) {
                    for t in [a, b] {
                        if matches!(t, Ty::Bool | Ty::Null | Ty::Map | Ty::Type) {
                            return Err(mismatch(op(sym), a, b));
                        }
                    }
                    return Ok(Ty::Dyn);
                }
                let result = match (sym, a, b) {
                    (_, x, y) if x == y && x.numeric() => Some(x),
                    ("%", _, _) => None,
                    ("+", x, y) if x == y && matches!(x, Ty::String | Ty::Bytes | Ty::List | Ty::Duration) => Some(x),
                    ("+", Ty::Timestamp, Ty::Duration) | ("+", Ty::Duration, Ty::Timestamp) => Some(Ty::Timestamp),
                    ("-", Ty::Timestamp, Ty::Timestamp) => Some(Ty::Duration),
                    ("-", Ty::Timestamp, Ty::Duration) => Some(Ty::Timestamp),
                    ("-", Ty::Duration, Ty::Duration) => Some(Ty::Duration),
                    _ => None,
                };
                result.ok_or_else(|| mismatch(op(sym), a, b))
            }
            ("-_", None) => {
                arity(1)?;
                want(0, &[Ty::Int, Ty::Double, Ty::Duration])?;
                Ok(args[0])
            }
            ("_[_]" | "_[?_]", None) => {
                arity(2)?;
                match args[0] {
                    Ty::List => {
                        want(1, &[Ty::Int, Ty::Uint])?;
                        Ok(Ty::Dyn)
                    }
                    Ty::Map | Ty::Dyn => Ok(Ty::Dyn),
                    other => Err(self.error(e.id, format!("cannot index a value of type {}", other.name()))),
                }
            }
            ("@in", None) => {
                arity(2)?;
                want(1, &[Ty::List, Ty::Map])?;
                Ok(Ty::Bool)
            }
            ("size", t) => {
                let subject = match t {
                    Some(t) => {
                        arity(0)?;
                        t
                    }
                    None => {
                        arity(1)?;
                        args[0]
                    }
                };
                if known(subject) && !matches!(subject, Ty::String | Ty::Bytes | Ty::List | Ty::Map) {
                    return Err(self.error(e.id, format!("size() does not apply to {}", subject.name())));
                }
                Ok(Ty::Int)
            }
            ("contains" | "startsWith" | "endsWith" | "matches", Some(t)) => {
                arity(1)?;
                if name == "matches" {
                    self.check_regex_literal(&call.args[0])?;
                }
                if known(t) && t != Ty::String {
                    return Err(self.error(e.id, format!("{name}() applies to strings, not {}", t.name())));
                }
                want(0, &[Ty::String])?;
                Ok(Ty::Bool)
            }
            ("matches", None) => {
                arity(2)?;
                self.check_regex_literal(&call.args[1])?;
                want(0, &[Ty::String])?;
                want(1, &[Ty::String])?;
                Ok(Ty::Bool)
            }
            ("timestamp", None) => {
                arity(1)?;
                want(0, &[Ty::String, Ty::Timestamp, Ty::Int])?;
                Ok(Ty::Timestamp)
            }
            ("duration", None) => {
                arity(1)?;
                want(0, &[Ty::String, Ty::Duration])?;
                Ok(Ty::Duration)
            }
            ("int" | "uint" | "double" | "string" | "bool" | "bytes" | "dyn" | "type", None) => {
                arity(1)?;
                Ok(match name {
                    "int" => Ty::Int,
                    "uint" => Ty::Uint,
                    "double" => Ty::Double,
                    "string" => Ty::String,
                    "bool" => Ty::Bool,
                    "bytes" => Ty::Bytes,
                    "type" => Ty::Type,
                    _ => Ty::Dyn,
                })
            }
            (
                "getFullYear" | "getMonth" | "getDate" | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear" | "getHours"
                | "getMinutes" | "getSeconds" | "getMilliseconds",
                Some(t),
            ) => {
                if args.len() > 1 {
                    arity(1)?;
                }
                if known(t) && !matches!(t, Ty::Timestamp | Ty::Duration) {
                    return Err(self.error(e.id, format!("{name}() applies to timestamps, not {}", t.name())));
                }
                if !args.is_empty() {
                    want(0, &[Ty::String])?;
                }
                Ok(Ty::Int)
            }
            (_, Some(_)) => Err(self.error(e.id, format!("unknown method '{name}'"))),
            (_, None) => Err(self.error(e.id, format!("unknown function '{name}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::Timestamp;
    use proptest::prelude::*;

    fn ctx(v: serde_json::Value) -> RequestContext {
        match v {
            serde_json::Value::Object(m) => RequestContext::new(m),
            _ => RequestContext::empty(),
        }
    }

    fn eval(src: &str, context: &RequestContext) -> Result<bool, String> {
        let c = Condition::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let vars = Vars {
            subject: "user:alice",
            action: "documents:read",
            resource: "document:reports/q1.pdf",
            context,
            now: cel_timestamp(Timestamp::parse_rfc3339("2026-03-01T10:00:00Z").unwrap()),
        };
        c.eval(&vars)
    }

    #[test]
    fn evaluates_against_request_variables() {
        let c = ctx(serde_json::json!({"ip": "10.0.0.1", "level": 3, "mfa": true, "tags": ["a", "b"], "ratio": 0.5}));
        assert_eq!(eval("subject == 'user:alice'", &c), Ok(true));
        assert_eq!(eval("resource.startsWith('document:reports/')", &c), Ok(true));
        assert_eq!(eval("action.endsWith(':write')", &c), Ok(false));
        assert_eq!(eval("context.mfa && context.level >= 3", &c), Ok(true));
        assert_eq!(eval("'a' in context.tags", &c), Ok(true));
        assert_eq!(eval("context.tags.exists(t, t == 'b')", &c), Ok(true));
        assert_eq!(eval("context.ratio < 1.0", &c), Ok(true));
        assert_eq!(eval("has(context.ip)", &c), Ok(true));
        assert_eq!(eval("has(context.nope)", &c), Ok(false));
        assert_eq!(eval("now < timestamp('2027-01-01T00:00:00Z')", &c), Ok(true));
        assert_eq!(eval("now.getHours() == 10", &c), Ok(true));
        assert_eq!(eval("size(subject) == 10", &c), Ok(true));
        assert_eq!(eval("subject.matches('^user:')", &c), Ok(true));
        assert_eq!(eval("now - duration('1h') < now", &c), Ok(true));
    }

    #[test]
    fn runtime_errors_are_errors_not_false() {
        let c = RequestContext::empty();
        assert!(eval("context.missing == 'x'", &c).is_err());
        assert!(eval("context.missing", &c).is_err());
        let c2 = ctx(serde_json::json!({"level": "high"}));
        assert!(eval("context.level > 3", &c2).is_err());
        let c3 = ctx(serde_json::json!({"n": 5}));
        let r = eval("context.n", &c3);
        assert!(r.unwrap_err().contains("not a bool"));
    }

    #[test]
    fn compile_errors_have_positions() {
        let e = Condition::compile("subject == ").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.starts_with("syntax error"), "{e}");

        let e = Condition::compile("subject == 'a' &&\n  usr == 'b'").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3), "{e}");
        assert!(e.message.contains("undeclared reference to 'usr'"), "{e}");

        let e = Condition::compile("subject + 1 == 'x'").unwrap_err();
        assert!(e.message.contains("no operator '+' for string and int"), "{e}");
        assert_eq!(e.column, 9, "points at the operator: {e}");

        let e = Condition::compile("now < 'tomorrow'").unwrap_err();
        assert!(e.message.contains("timestamp and string"), "{e}");

        let e = Condition::compile("subject").unwrap_err();
        assert!(e.message.contains("must be a bool expression"), "{e}");

        let e = Condition::compile("frobnicate(subject)").unwrap_err();
        assert!(e.message.contains("unknown function 'frobnicate'"), "{e}");

        let e = Condition::compile("subject.size2()").unwrap_err();
        assert!(e.message.contains("unknown method"), "{e}");

        let e = Condition::compile("subject.foo == 1").unwrap_err();
        assert!(e.message.contains("cannot select field"), "{e}");

        assert!(Condition::compile("").is_err());
        assert!(
            Condition::compile(&"(".repeat(100))
                .unwrap_err()
                .message
                .contains("nested")
        );
        assert!(Condition::compile(&"x".repeat(MAX_SOURCE_CHARS + 1)).is_err());
    }

    #[test]
    fn dynamic_context_values_are_accepted_at_compile_time() {
        for ok in [
            "context.level > 3",
            "context.a.b.c == 'x'",
            "context['k'] + 1 > 2",
            "context.tags.all(t, t.startsWith('x'))",
            "context.x ? true : false",
            "int(context.n) % 2 == 0",
            "timestamp(context.t) < now",
            "[1, 2].exists(x, x > 1)",
            "{'a': 1}.a == 1",
            "type(context.x) == string",
            "now.getDayOfWeek('Europe/Paris') < 6",
        ] {
            Condition::compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn malformed_macros_do_not_overflow_a_small_stack() {
        // Found by the fuzzer: the parser needed over 1.5 MiB of stack here.
        let src = ".exists(b, .filter(d, .map(c, size( == a.all(a, .map(c, .all(a, .filter(d, )size(.all(a,  == .all(a,  == .matches('a+')a.matches('a+')context.xs.matches('a+') in ";
        let r = std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || Condition::compile(src).is_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(r);
    }

    #[test]
    fn deep_operator_chains_are_bounded() {
        let long = vec!["1"; 1500].join(" + ");
        let src = format!("{long} > 0");
        // Either compiles or is rejected; it must not overflow the stack.
        let _ = Condition::compile(&src);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn compile_never_panics(s in "\\PC{0,80}") {
            let _ = Condition::compile(&s);
        }

        #[test]
        fn compile_never_panics_on_cel_like_input(s in "[a-z()\\[\\]{}.,'\" =<>!&|+*/%?:0-9-]{0,60}") {
            let _ = Condition::compile(&s);
        }
    }
}
