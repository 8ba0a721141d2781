//! MC, a small C-like language, and its compiler: a tokenizer, a
//! recursive-descent parser with precedence climbing, name checks, and code
//! generation for a stack machine (one instruction per line). Pure and
//! host-tested; `mcc` is the program around it.
//!
//! ```text
//! program := func*
//! func    := "fn" NAME "(" [NAME ("," NAME)*] ")" block
//! block   := "{" stmt* "}"
//! stmt    := "let" NAME "=" expr ";" | NAME "=" expr ";"
//!          | "if" "(" expr ")" block ["else" (block | if-stmt)]
//!          | "while" "(" expr ")" block | "return" expr ";" | expr ";"
//! expr    := binary operators || && == != < <= > >= + - * / % (usual
//!            precedence, left-associative), unary - !, calls, parentheses
//! ```

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Number(i64),
    Name(String),
    /// Keywords and punctuation.
    Sym(&'static str),
}

/// A token and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned {
    pub token: Token,
    pub line: u32,
}

const KEYWORDS: [&str; 6] = ["fn", "let", "if", "else", "while", "return"];
const SYMBOLS: [&str; 24] =
    ["||", "&&", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "=", "(", ")", "{", "}", ",", ";", "[", "]", "."];

/// A compile error or warning, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: u32,
    pub error: bool,
    pub message: String,
}

pub fn tokenize(src: &str) -> Result<Vec<Spanned>, Diagnostic> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1u32);
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let n = src[start..i].parse::<i64>().map_err(|_| Diagnostic { line, error: true, message: "number too large".into() })?;
            out.push(Spanned { token: Token::Number(n), line });
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &src[start..i];
            let token = match KEYWORDS.iter().find(|k| **k == word) {
                Some(k) => Token::Sym(k),
                None => Token::Name(word.into()),
            };
            out.push(Spanned { token, line });
        } else if let Some(s) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            out.push(Spanned { token: Token::Sym(s), line });
            i += s.len();
        } else {
            return Err(Diagnostic { line, error: true, message: format!("unexpected character {:?}", c as char) });
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Number(i64),
    Var(String, u32),
    Call(String, Vec<Expr>, u32),
    Unary(&'static str, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
}

use alloc::boxed::Box;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    Let(String, Expr, u32),
    Assign(String, Expr, u32),
    If(Expr, Vec<Stmt>, Vec<Stmt>),
    While(Expr, Vec<Stmt>),
    Return(Expr),
    Expr(Expr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Func {
    pub name: String,
    pub params: Vec<String>,
    pub body: Vec<Stmt>,
    pub line: u32,
}

struct Parser {
    tokens: Vec<Spanned>,
    at: usize,
}

/// Binary operators by precedence level, loosest first.
const LEVELS: [&[&str]; 6] = [&["||"], &["&&"], &["==", "!="], &["<", "<=", ">", ">="], &["+", "-"], &["*", "/", "%"]];

impl Parser {
    fn line(&self) -> u32 {
        self.tokens.get(self.at).or(self.tokens.last()).map_or(1, |t| t.line)
    }
    fn err<T>(&self, what: &str) -> Result<T, Diagnostic> {
        let found = match self.tokens.get(self.at).map(|t| &t.token) {
            Some(Token::Number(n)) => format!("{n}"),
            Some(Token::Name(n)) => n.clone(),
            Some(Token::Sym(s)) => String::from(*s),
            None => String::from("end of file"),
        };
        Err(Diagnostic { line: self.line(), error: true, message: format!("expected {what}, found {found}") })
    }
    fn peek_sym(&self, s: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Spanned { token: Token::Sym(t), .. }) if *t == s)
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.peek_sym(s) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, s: &str) -> Result<(), Diagnostic> {
        if self.eat(s) {
            Ok(())
        } else {
            self.err(&format!("`{s}`"))
        }
    }
    fn name(&mut self) -> Result<String, Diagnostic> {
        match self.tokens.get(self.at) {
            Some(Spanned { token: Token::Name(n), .. }) => {
                self.at += 1;
                Ok(n.clone())
            }
            _ => self.err("a name"),
        }
    }
    fn func(&mut self) -> Result<Func, Diagnostic> {
        let line = self.line();
        self.expect("fn")?;
        let name = self.name()?;
        self.expect("(")?;
        let mut params = Vec::new();
        if !self.eat(")") {
            loop {
                params.push(self.name()?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        Ok(Func { name, params, body: self.block()?, line })
    }
    fn block(&mut self) -> Result<Vec<Stmt>, Diagnostic> {
        self.expect("{")?;
        let mut v = Vec::new();
        while !self.eat("}") {
            if self.at >= self.tokens.len() {
                return self.err("`}`");
            }
            v.push(self.stmt()?);
        }
        Ok(v)
    }
    fn stmt(&mut self) -> Result<Stmt, Diagnostic> {
        let line = self.line();
        if self.eat("let") {
            let n = self.name()?;
            self.expect("=")?;
            let e = self.expr(0)?;
            self.expect(";")?;
            return Ok(Stmt::Let(n, e, line));
        }
        if self.eat("if") {
            self.expect("(")?;
            let c = self.expr(0)?;
            self.expect(")")?;
            let then = self.block()?;
            let otherwise = if self.eat("else") {
                if self.peek_sym("if") {
                    alloc::vec![self.stmt()?]
                } else {
                    self.block()?
                }
            } else {
                Vec::new()
            };
            return Ok(Stmt::If(c, then, otherwise));
        }
        if self.eat("while") {
            self.expect("(")?;
            let c = self.expr(0)?;
            self.expect(")")?;
            return Ok(Stmt::While(c, self.block()?));
        }
        if self.eat("return") {
            let e = self.expr(0)?;
            self.expect(";")?;
            return Ok(Stmt::Return(e));
        }
        if let (Some(Token::Name(n)), Some(Token::Sym("="))) =
            (self.tokens.get(self.at).map(|t| &t.token), self.tokens.get(self.at + 1).map(|t| &t.token))
        {
            let n = n.clone();
            self.at += 2;
            let e = self.expr(0)?;
            self.expect(";")?;
            return Ok(Stmt::Assign(n, e, line));
        }
        let e = self.expr(0)?;
        self.expect(";")?;
        Ok(Stmt::Expr(e))
    }
    fn expr(&mut self, level: usize) -> Result<Expr, Diagnostic> {
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.expr(level + 1)?;
        loop {
            let Some(op) = LEVELS[level].iter().find(|op| self.peek_sym(op)) else { return Ok(left) };
            self.at += 1;
            let right = self.expr(level + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }
    fn unary(&mut self) -> Result<Expr, Diagnostic> {
        for op in ["-", "!"] {
            if self.eat(op) {
                return Ok(Expr::Unary(if op == "-" { "-" } else { "!" }, Box::new(self.unary()?)));
            }
        }
        let line = self.line();
        match self.tokens.get(self.at).map(|t| t.token.clone()) {
            Some(Token::Number(n)) => {
                self.at += 1;
                Ok(Expr::Number(n))
            }
            Some(Token::Name(n)) => {
                self.at += 1;
                if self.eat("(") {
                    let mut args = Vec::new();
                    if !self.eat(")") {
                        loop {
                            args.push(self.expr(0)?);
                            if self.eat(")") {
                                break;
                            }
                            self.expect(",")?;
                        }
                    }
                    Ok(Expr::Call(n, args, line))
                } else {
                    Ok(Expr::Var(n, line))
                }
            }
            Some(Token::Sym("(")) => {
                self.at += 1;
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            _ => self.err("an expression"),
        }
    }
}

pub fn parse(tokens: Vec<Spanned>) -> Result<Vec<Func>, Diagnostic> {
    let mut p = Parser { tokens, at: 0 };
    let mut funcs = Vec::new();
    while p.at < p.tokens.len() {
        funcs.push(p.func()?);
    }
    Ok(funcs)
}

/// Code generation and name checks for one program.
struct Gen<'a> {
    funcs: &'a BTreeMap<String, usize>,
    code: String,
    labels: u32,
    /// Variables in scope with whether they were read.
    vars: Vec<(String, bool, u32)>,
    diags: Vec<Diagnostic>,
}

impl Gen<'_> {
    fn emit(&mut self, line: &str) {
        self.code.push_str("    ");
        self.code.push_str(line);
        self.code.push('\n');
    }
    fn label(&mut self) -> u32 {
        self.labels += 1;
        self.labels
    }
    fn read(&mut self, name: &str, line: u32) {
        match self.vars.iter_mut().rev().find(|v| v.0 == name) {
            Some(v) => v.1 = true,
            None => self.diags.push(Diagnostic { line, error: true, message: format!("`{name}` is not defined") }),
        }
    }
    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Number(n) => self.emit(&format!("push {n}")),
            Expr::Var(n, line) => {
                self.read(n, *line);
                self.emit(&format!("load {n}"));
            }
            Expr::Call(f, args, line) => {
                for a in args {
                    self.expr(a);
                }
                match self.funcs.get(f) {
                    Some(&arity) if arity == args.len() => {}
                    Some(&arity) => self.diags.push(Diagnostic {
                        line: *line,
                        error: true,
                        message: format!("`{f}` takes {arity} arguments, not {}", args.len()),
                    }),
                    None => self.diags.push(Diagnostic { line: *line, error: false, message: format!("`{f}` is external") }),
                }
                self.emit(&format!("call {f} {}", args.len()));
            }
            Expr::Unary(op, x) => {
                self.expr(x);
                self.emit(if *op == "-" { "neg" } else { "not" });
            }
            Expr::Binary(op, l, r) => {
                self.expr(l);
                self.expr(r);
                let ins = match *op {
                    "||" => "or",
                    "&&" => "and",
                    "==" => "eq",
                    "!=" => "ne",
                    "<" => "lt",
                    "<=" => "le",
                    ">" => "gt",
                    ">=" => "ge",
                    "+" => "add",
                    "-" => "sub",
                    "*" => "mul",
                    "/" => "div",
                    _ => "rem",
                };
                self.emit(ins);
            }
        }
    }
    fn block(&mut self, stmts: &[Stmt]) {
        let depth = self.vars.len();
        for s in stmts {
            self.stmt(s);
        }
        for (name, used, line) in self.vars.drain(depth..) {
            if !used {
                self.diags.push(Diagnostic { line, error: false, message: format!("`{name}` is never read") });
            }
        }
    }
    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Let(n, e, line) => {
                self.expr(e);
                self.vars.push((n.clone(), false, *line));
                self.emit(&format!("store {n}"));
            }
            Stmt::Assign(n, e, line) => {
                self.expr(e);
                if !self.vars.iter().any(|v| &v.0 == n) {
                    self.diags.push(Diagnostic { line: *line, error: true, message: format!("`{n}` is not defined") });
                }
                self.emit(&format!("store {n}"));
            }
            Stmt::If(c, then, otherwise) => {
                let (l_else, l_end) = (self.label(), self.label());
                self.expr(c);
                self.emit(&format!("jz L{l_else}"));
                self.block(then);
                self.emit(&format!("jmp L{l_end}"));
                self.code.push_str(&format!("L{l_else}:\n"));
                self.block(otherwise);
                self.code.push_str(&format!("L{l_end}:\n"));
            }
            Stmt::While(c, body) => {
                let (l_top, l_end) = (self.label(), self.label());
                self.code.push_str(&format!("L{l_top}:\n"));
                self.expr(c);
                self.emit(&format!("jz L{l_end}"));
                self.block(body);
                self.emit(&format!("jmp L{l_top}"));
                self.code.push_str(&format!("L{l_end}:\n"));
            }
            Stmt::Return(e) => {
                self.expr(e);
                self.emit("ret");
            }
            Stmt::Expr(e) => {
                self.expr(e);
                self.emit("pop");
            }
        }
    }
}

/// What compiling one file gave: the code (stack-machine assembly), the
/// diagnostics, and how many functions it defines.
pub struct Compiled {
    pub code: String,
    pub diagnostics: Vec<Diagnostic>,
    pub functions: usize,
}

impl Compiled {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.error).count()
    }
}

/// Compiles one source file.
pub fn compile(src: &str) -> Compiled {
    let funcs = match tokenize(src).and_then(parse) {
        Ok(f) => f,
        Err(d) => return Compiled { code: String::new(), diagnostics: alloc::vec![d], functions: 0 },
    };
    let arities: BTreeMap<String, usize> = funcs.iter().map(|f| (f.name.clone(), f.params.len())).collect();
    let mut g = Gen { funcs: &arities, code: String::new(), labels: 0, vars: Vec::new(), diags: Vec::new() };
    for f in &funcs {
        if arities.len() < funcs.len() && funcs.iter().filter(|o| o.name == f.name).count() > 1 {
            g.diags.push(Diagnostic { line: f.line, error: true, message: format!("`{}` is defined twice", f.name) });
        }
        g.code.push_str(&format!("func {} {}\n", f.name, f.params.len()));
        g.vars = f.params.iter().map(|p| (p.clone(), false, f.line)).collect();
        g.block(&f.body);
        for (name, used, line) in g.vars.drain(..) {
            if !used {
                g.diags.push(Diagnostic { line, error: false, message: format!("parameter `{name}` is never read") });
            }
        }
        g.emit("push 0");
        g.emit("ret");
    }
    Compiled { code: g.code, diagnostics: g.diags, functions: funcs.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_functions_loops_and_calls() {
        let c = compile(
            "// sum of squares\nfn sq(x) { return x * x; }\nfn main() {\n let i = 0; let s = 0;\n while (i < 10) { s = s + sq(i); i = i + 1; }\n return s;\n}\n",
        );
        assert_eq!(c.errors(), 0, "{:?}", c.diagnostics);
        assert_eq!(c.functions, 2);
        assert!(c.code.contains("func sq 1\n    load x\n    load x\n    mul\n    ret\n"), "{}", c.code);
        assert!(c.code.contains("call sq 1"));
        assert!(c.code.contains("jz L2"));
    }

    #[test]
    fn precedence_and_unary() {
        let f = parse(tokenize("fn f() { return 1 + 2 * -3 == 4 || !0; }").unwrap()).unwrap();
        let Stmt::Return(e) = &f[0].body[0] else { panic!() };
        // ((1 + (2 * -3)) == 4) || (!0)
        let Expr::Binary("||", l, r) = e else { panic!("{e:?}") };
        assert!(matches!(**r, Expr::Unary("!", _)));
        let Expr::Binary("==", sum, _) = &**l else { panic!() };
        let Expr::Binary("+", _, prod) = &**sum else { panic!() };
        assert!(matches!(**prod, Expr::Binary("*", _, _)));
    }

    #[test]
    fn diagnostics() {
        let c = compile("fn f(a) {\n let b = 1;\n return c + g(1, 2);\n}\nfn g(x) { return x; }\n");
        let msgs: Vec<&str> = c.diagnostics.iter().map(|d| d.message.as_str()).collect();
        assert!(msgs.contains(&"`c` is not defined"), "{msgs:?}");
        assert!(msgs.contains(&"`g` takes 1 arguments, not 2"), "{msgs:?}");
        assert!(msgs.contains(&"`b` is never read"), "{msgs:?}");
        assert!(msgs.contains(&"parameter `a` is never read"), "{msgs:?}");
        assert_eq!(c.errors(), 2);
        let e = compile("fn f() { return (1; }");
        assert_eq!(e.diagnostics[0].message, "expected `)`, found ;");
        assert_eq!(compile("fn f() { @ }").diagnostics[0].message, "unexpected character '@'");
    }
}
