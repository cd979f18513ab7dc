//! What a condition may cost, bounded twice.
//!
//! Costs are counted in *steps* (about one interpreted node, ~100 ns; the
//! `cel_cost` benchmark measures it). A node's [`Weight`] is a fixed part
//! plus a part per element of the longest collection in the request's
//! context (`L`), for work that grows with a value: membership in a list,
//! equality of collections. Weights are kept in 1/[`SCALE`] steps.
//!
//! **At write time** a static estimate: a comprehension (`all`, `exists`,
//! `exists_one`, `map`, `filter`) costs its body times the size of what it
//! iterates, sizes being polynomials in `L` (literal lists count their
//! elements). A condition that nests comprehensions deeper than
//! [`MAX_COMPREHENSION_NESTING`], or whose estimate at the largest context
//! allowed ([`MAX_CONTEXT_LIST`]) exceeds [`MAX_STATIC_COST`], is refused
//! with its line and column.
//!
//! **At check time** a budget: every comprehension body is rewritten to
//! call `@budget(fixed, per_l)` before each element (guarding the body, so
//! an exhausted budget skips the work instead of failing after it), and
//! each evaluation is charged its weight up front, all at the actual `L` of
//! the request. A check's conditions share one [`Budget`]; when it runs out
//! the condition fails closed with a condition error in the explanation.
//! The server runs every check with a small inline budget first and re-runs
//! the few that exhaust it on a separate bounded pool with the full one, so
//! no check holds a request thread for long.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use cel::ExecutionError;
use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, ListExpr, LiteralValue};
use cel::common::types::{CelBool, CelInt};
use cel::common::value::CowVal;

/// The longest list (and the most keys of a map) a request context may
/// hold, at any depth.
pub const MAX_CONTEXT_LIST: usize = 256;
/// The longest string a request context may hold.
pub const MAX_CONTEXT_STRING: usize = 4096;
/// Comprehensions nested in one another, at most.
pub const MAX_COMPREHENSION_NESTING: usize = 3;
/// The largest static estimate a condition may have at the largest
/// context, in steps: two comprehensions nested over full-size context
/// lists pass (and may run out of budget at check time), three do not.
pub const MAX_STATIC_COST: u64 = 1_000_000_000;
/// The evaluation budget of one check, all its conditions together, in
/// steps: a few milliseconds of CPU.
pub const CHECK_BUDGET: i64 = 100_000;
/// The budget a check first runs with on a request thread; a check that
/// needs more is re-run on the bounded pool with [`CHECK_BUDGET`].
pub const INLINE_BUDGET: i64 = 1_000;
/// Weights are in 1/SCALE steps, so per-element costs can be fractions.
pub const SCALE: u64 = 64;

/// The name of the budget function the rewrite calls; `@` keeps it out of
/// reach of condition authors (CEL identifiers cannot start with `@`).
pub const BUDGET_FN: &str = "@budget";
pub const EXHAUSTED: &str = "the condition exceeded its evaluation budget";

/// What evaluating a node costs, in 1/[`SCALE`] steps: `fixed` plus
/// `per_l` for each element of the longest collection in the context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weight {
    pub fixed: u64,
    pub per_l: u64,
}

impl Weight {
    const fn steps(n: u64) -> Weight {
        Weight {
            fixed: n * SCALE,
            per_l: 0,
        }
    }
    fn plus(self, o: Weight) -> Weight {
        Weight {
            fixed: self.fixed.saturating_add(o.fixed),
            per_l: self.per_l.saturating_add(o.per_l),
        }
    }
    /// In 1/SCALE steps, at a context whose longest collection is `l`.
    pub fn at(self, l: u64) -> u64 {
        self.fixed.saturating_add(self.per_l.saturating_mul(l))
    }
    fn poly(self) -> Poly {
        let mut p = Poly::constant(self.fixed);
        p.0[1] = self.per_l;
        p
    }
}

/// Whether a value may be a collection (as far as the static estimate
/// knows): context values and comprehension variables may be; literals,
/// `subject`, `action`, `resource`, `now` and results of comparisons are not.
fn may_be_collection(e: &IdedExpr) -> bool {
    match &e.expr {
        Expr::Literal(_) => false,
        // `context` itself is lent, not copied.
        Expr::Ident(n) => !matches!(n.as_str(), "subject" | "action" | "resource" | "now" | "context"),
        Expr::List(_) | Expr::Map(_) | Expr::Select(_) | Expr::Comprehension(_) => true,
        Expr::Call(c) => matches!(c.func_name.as_str(), "_[_]" | "_+_" | "_?_:_" | "dyn"),
        _ => true,
    }
}

/// Producing a value that may be a collection copies it: the interpreter
/// clones lists element by element (about 1.5 steps each, measured).
const COPY: Weight = Weight {
    fixed: SCALE,
    per_l: SCALE * 3 / 2,
};

/// A node's own weight, given its children: one step for most; for work
/// that grows with a value, what the largest value it can meet costs:
/// values that may be collections are copied when read, membership counts
/// the list's elements, equality of collections theirs, string scans the
/// longest string, regular expressions their compilation too (the
/// interpreter compiles a pattern on every call).
fn node_weight(e: &IdedExpr, children: &[Estimate]) -> Weight {
    let per_element = |i: usize| -> Weight {
        // A literal list costs its length; anything else up to L.
        match children.get(i).map(|c| c.size) {
            Some(sz) if sz.0[1..].iter().all(|c| *c == 0) => Weight {
                fixed: SCALE + sz.0[0].saturating_mul(SCALE / 2),
                per_l: 0,
            },
            _ => Weight {
                fixed: SCALE,
                per_l: SCALE / 2,
            },
        }
    };
    match &e.expr {
        Expr::Ident(_) | Expr::Select(_) | Expr::List(_) | Expr::Map(_) | Expr::Comprehension(_)
            if may_be_collection(e) =>
        {
            COPY
        }
        Expr::Call(c) => {
            // Children are the target (if any), then the arguments.
            let a0 = usize::from(c.target.is_some());
            match c.func_name.as_str() {
                "@in" if c.args.len() == 2 => per_element(a0 + 1),
                "_==_" | "_!=_" if c.args.len() == 2 => {
                    if may_be_collection(&c.args[0]) && may_be_collection(&c.args[1]) {
                        per_element(a0)
                    } else {
                        Weight::steps(1)
                    }
                }
                "_+_" | "_[_]" => COPY,
                "matches" => Weight::steps(1000),
                "contains" | "startsWith" | "endsWith" | "string" | "timestamp" | "duration" => {
                    Weight::steps(1 + (MAX_CONTEXT_STRING as u64) / 512)
                }
                _ => Weight::steps(1),
            }
        }
        _ => Weight::steps(1),
    }
}

/// A polynomial in `L` with saturating coefficients, `c[i] * L^i`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Poly(pub [u64; MAX_COMPREHENSION_NESTING + 2]);

impl Poly {
    pub fn constant(c: u64) -> Poly {
        let mut p = Poly::default();
        p.0[0] = c;
        p
    }
    /// `L`: a collection from the request context, of unknown length.
    pub fn context() -> Poly {
        let mut p = Poly::default();
        p.0[1] = 1;
        p
    }
    pub fn plus(self, o: Poly) -> Poly {
        let mut r = self;
        for (a, b) in r.0.iter_mut().zip(o.0) {
            *a = a.saturating_add(b);
        }
        r
    }
    pub fn times(self, o: Poly) -> Poly {
        let mut r = Poly::default();
        for (i, a) in self.0.iter().enumerate() {
            for (j, b) in o.0.iter().enumerate() {
                let k = (i + j).min(r.0.len() - 1);
                r.0[k] = r.0[k].saturating_add(a.saturating_mul(*b));
            }
        }
        r
    }
    pub fn at(self, l: u64) -> u64 {
        self.0
            .iter()
            .rev()
            .fold(0u64, |acc, c| acc.saturating_mul(l).saturating_add(*c))
    }
}

/// The static estimate of an expression: its cost (comprehensions
/// multiplied out; in 1/SCALE steps), its weight (one evaluation,
/// comprehensions not multiplied: what the budget is charged up front), its
/// size if it is a collection, and the comprehension nesting.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub cost: Poly,
    pub weight: Weight,
    pub size: Poly,
    pub nesting: usize,
}

/// Estimates `e` bottom-up, in one pass.
pub fn estimate(e: &IdedExpr) -> Estimate {
    let mut children = Vec::new();
    visit_children(e, &mut |c| children.push(estimate(c)));
    let w = node_weight(e, &children);
    let mut r = Estimate {
        cost: w.poly(),
        weight: w,
        size: Poly::context(),
        nesting: 0,
    };
    for c in &children {
        r.cost = r.cost.plus(c.cost);
        r.weight = r.weight.plus(c.weight);
        r.nesting = r.nesting.max(c.nesting);
    }
    match &e.expr {
        Expr::Literal(_) | Expr::Unspecified => r.size = Poly::constant(1),
        Expr::List(l) => r.size = Poly::constant(l.elements.len() as u64),
        Expr::Map(m) => r.size = Poly::constant(m.entries.len() as u64),
        Expr::Call(c) if c.func_name == "_+_" && c.target.is_none() && children.len() == 2 => {
            // Concatenation: the sizes add up.
            r.size = children[0].size.plus(children[1].size);
        }
        Expr::Comprehension(_) => {
            // Children: range, init, cond, step, result.
            let (range, init, cond, step, result) = (children[0], children[1], children[2], children[3], children[4]);
            let body = cond.cost.plus(step.cost).plus(Poly::constant(SCALE));
            r.cost = w
                .poly()
                .plus(range.cost)
                .plus(init.cost)
                .plus(range.size.times(body))
                .plus(result.cost);
            r.nesting += 1;
            // map and filter yield at most one element per element.
            r.size = range.size;
        }
        _ => {}
    }
    r
}

/// The estimate in whole steps at the largest context allowed.
pub fn worst_steps(e: &Estimate) -> u64 {
    e.cost.at(MAX_CONTEXT_LIST as u64) / SCALE
}

/// What one evaluation of `e` costs, not counting the iterations of
/// comprehensions inside it (those are charged as they run).
pub fn static_weight(e: &IdedExpr) -> Weight {
    estimate(e).weight
}

fn visit_children(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                f(t);
            }
            c.args.iter().for_each(&mut *f);
        }
        Expr::Select(s) => f(&s.operand),
        Expr::List(l) => l.elements.iter().for_each(&mut *f),
        Expr::Map(cel::common::ast::MapExpr { entries })
        | Expr::Struct(cel::common::ast::StructExpr { entries, .. }) => {
            for en in entries {
                match &en.expr {
                    EntryExpr::MapEntry(me) => {
                        f(&me.key);
                        f(&me.value);
                    }
                    EntryExpr::StructField(sf) => f(&sf.value),
                }
            }
        }
        Expr::Comprehension(c) => {
            f(&c.iter_range);
            f(&c.accu_init);
            f(&c.loop_cond);
            f(&c.loop_step);
            f(&c.result);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn call(name: &str, args: Vec<IdedExpr>) -> IdedExpr {
    IdedExpr {
        id: 0,
        expr: Expr::Call(CallExpr {
            func_name: name.to_string(),
            target: None,
            args,
        }),
    }
}

fn lit(v: LiteralValue) -> IdedExpr {
    IdedExpr {
        id: 0,
        expr: Expr::Literal(v),
    }
}

/// `@budget(fixed, per_l) ? inner : otherwise`: the budget is charged
/// before `inner` runs, and an exhausted budget is an error instead of the
/// work.
fn guarded(w: Weight, inner: IdedExpr, otherwise: IdedExpr) -> IdedExpr {
    let int = |n: u64| lit(LiteralValue::Int(CelInt::from(n.min(i64::MAX as u64) as i64)));
    let charge = call(BUDGET_FN, vec![int(w.fixed), int(w.per_l)]);
    call("_?_:_", vec![charge, inner, otherwise])
}

fn is_ident(e: &IdedExpr, name: &str) -> bool {
    matches!(&e.expr, Expr::Ident(n) if n == name)
}

/// Rewrites every comprehension of `e` to charge the budget before each
/// element, keeping the shapes the interpreter recognises (`accu && x`,
/// `accu || x`, `accu + [x]`, `cond ? accu + [x] : accu`) so its error and
/// append semantics stay the same.
pub fn instrument(e: &mut IdedExpr) {
    match &mut e.expr {
        Expr::Call(c) => {
            if let Some(t) = &mut c.target {
                instrument(t);
            }
            c.args.iter_mut().for_each(instrument);
        }
        Expr::Select(s) => instrument(&mut s.operand),
        Expr::List(l) => l.elements.iter_mut().for_each(instrument),
        Expr::Map(m) => {
            for en in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut en.expr {
                    instrument(&mut me.key);
                    instrument(&mut me.value);
                }
            }
        }
        Expr::Comprehension(c) => {
            instrument(&mut c.iter_range);
            instrument(&mut c.accu_init);
            instrument(&mut c.loop_cond);
            instrument(&mut c.loop_step);
            instrument(&mut c.result);
            let w = Weight::steps(1)
                .plus(static_weight(&c.loop_cond))
                .plus(static_weight(&c.loop_step));
            let accu = c.accu_var.clone();
            let step = std::mem::take(&mut c.loop_step);
            c.loop_step = guard_step(step, &accu, w);
        }
        _ => {}
    }
}

fn guard_step(mut step: IdedExpr, accu: &str, w: Weight) -> IdedExpr {
    if let Expr::Call(call) = &mut step.expr {
        let name = call.func_name.clone();
        let args = &mut call.args;
        match name.as_str() {
            // all / exists: `accu && x`, `accu || x`.
            "_&&_" | "_||_" if call.target.is_none() && args.len() == 2 && is_ident(&args[0], accu) => {
                let x = std::mem::take(&mut args[1]);
                args[1] = guarded(w, x, lit(LiteralValue::Boolean(CelBool::FALSE)));
                return step;
            }
            // map: `accu + [x]`.
            "_+_" if call.target.is_none() && args.len() == 2 && is_ident(&args[0], accu) => {
                if let Expr::List(ListExpr { elements, .. }) = &mut args[1].expr {
                    for el in elements.iter_mut() {
                        let x = std::mem::take(el);
                        *el = guarded(w, x, lit(LiteralValue::Null));
                    }
                    return step;
                }
            }
            // filter and exists_one: `cond ? accu + ... : accu`.
            "_?_:_" if call.target.is_none() && args.len() == 3 && is_ident(&args[2], accu) => {
                let x = std::mem::take(&mut args[0]);
                args[0] = guarded(w, x, lit(LiteralValue::Boolean(CelBool::FALSE)));
                return step;
            }
            _ => {}
        }
    }
    let accu_ident = IdedExpr {
        id: 0,
        expr: Expr::Ident(accu.to_string()),
    };
    guarded(w, step, accu_ident)
}

thread_local! {
    /// The budget left to the evaluation running on this thread (in
    /// 1/SCALE steps) and its context's `L`. The interpreter calls
    /// functions through plain `fn` pointers, so they reach `@budget`
    /// here; evaluations never nest.
    static LEFT: Cell<i64> = const { Cell::new(i64::MAX) };
    static L: Cell<u64> = const { Cell::new(0) };
}

/// `@budget(fixed, per_l)`: takes the weight from the running
/// evaluation's budget.
pub fn budget_fn<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let arg = |i: usize| {
        args.get(i)
            .and_then(|a| a.downcast_ref::<CelInt>())
            .map(|i| (*i.inner()).max(0) as u64)
            .unwrap_or(SCALE)
    };
    let w = Weight {
        fixed: arg(0),
        per_l: arg(1),
    };
    let charge = w.at(L.with(|l| l.get())).min(i64::MAX as u64) as i64;
    let left = LEFT.with(|l| {
        let n = l.get().saturating_sub(charge);
        l.set(n);
        n
    });
    if left < 0 {
        Err(ExecutionError::function_error(BUDGET_FN, EXHAUSTED))
    } else {
        Ok(CowVal::Borrowed(&CelBool::TRUE))
    }
}

/// What one check may spend on its conditions, shared by all of them, and
/// the `L` of its context. (Atomics only because the interpreter wants its
/// variables `Sync`; one thread uses a budget at a time.)
#[derive(Debug)]
pub struct Budget {
    /// In steps.
    limit: i64,
    /// In 1/SCALE steps.
    left: AtomicI64,
    exhausted: AtomicBool,
    l: u64,
}

impl Budget {
    pub fn new(limit: i64) -> Budget {
        Budget {
            limit,
            left: AtomicI64::new(limit.saturating_mul(SCALE as i64)),
            exhausted: AtomicBool::new(false),
            l: 0,
        }
    }
    /// The same budget, for a context whose longest collection is `l`.
    pub fn for_context(mut self, l: u64) -> Budget {
        self.l = l;
        self
    }
    pub fn limit(&self) -> i64 {
        self.limit
    }
    pub fn longest(&self) -> u64 {
        self.l
    }
    /// Whether a condition ran out of budget (and so failed closed).
    pub fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Runs `f` (one evaluation of weight `w`) against this budget.
    pub fn run<T>(&self, w: Weight, f: impl FnOnce() -> T) -> Result<T, &'static str> {
        let charge = w.at(self.l).min(i64::MAX as u64) as i64;
        let left = self.left.load(Ordering::Relaxed).saturating_sub(charge);
        if left < 0 {
            self.left.store(0, Ordering::Relaxed);
            self.exhausted.store(true, Ordering::Relaxed);
            return Err(EXHAUSTED);
        }
        let saved = LEFT.with(|c| c.replace(left));
        let saved_l = L.with(|c| c.replace(self.l));
        let out = f();
        let after = LEFT.with(|c| c.replace(saved));
        L.with(|c| c.set(saved_l));
        self.left.store(after.max(0), Ordering::Relaxed);
        if after < 0 {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        Ok(out)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(CHECK_BUDGET)
    }
}

impl Clone for Budget {
    /// A fresh budget of the same size, for the same context.
    fn clone(&self) -> Self {
        Budget::new(self.limit).for_context(self.l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomials() {
        let l = Poly::context();
        let p = l.times(l).plus(Poly::constant(3));
        assert_eq!(p.at(10), 103);
        assert_eq!(Poly::constant(u64::MAX).times(l).at(u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn budget_runs_out_and_reports_it() {
        let b = Budget::new(10).for_context(4);
        let w = Weight {
            fixed: 2 * SCALE,
            per_l: SCALE / 2,
        };
        assert!(b.run(w, || ()).is_ok(), "2 + 4/2 = 4 steps");
        assert!(!b.exhausted());
        assert!(b.run(w, || ()).is_ok(), "8 steps");
        assert!(b.run(w, || ()).is_err(), "12 > 10");
        assert!(b.exhausted());
    }
}
