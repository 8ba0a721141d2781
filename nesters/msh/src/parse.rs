//! Command lines: words (with quotes), pipelines, lists. Pure and host-tested.

use alloc::string::String;
use alloc::vec::Vec;

/// One command of a pipeline.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub words: Vec<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub append: bool,
}

/// Commands joined by `|`, maybe in the background.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pipeline {
    pub commands: Vec<Command>,
    pub background: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Pipe,
    Amp,
    Semi,
    In,
    Out,
    Append,
}

/// What `$?` becomes in a word until the pipeline runs
/// (`Pipeline::expand_status`): a list's `$?` is the status of the command
/// before it, not of the line before. The console never hands over control
/// characters, so no typed word contains it.
pub const STATUS_MARK: char = '\u{1}';

fn tokens(line: &str) -> Result<Vec<Token>, &'static str> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                chars.next();
            }
            '#' => break,
            '|' => {
                chars.next();
                out.push(Token::Pipe);
            }
            '&' => {
                chars.next();
                out.push(Token::Amp);
            }
            ';' => {
                chars.next();
                out.push(Token::Semi);
            }
            '<' => {
                chars.next();
                out.push(Token::In);
            }
            '>' => {
                chars.next();
                if chars.peek() == Some(&'>') {
                    chars.next();
                    out.push(Token::Append);
                } else {
                    out.push(Token::Out);
                }
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    match c {
                        ' ' | '\t' | '\r' | '\n' | '|' | '&' | ';' | '<' | '>' => break,
                        '\'' => {
                            chars.next();
                            loop {
                                match chars.next() {
                                    Some('\'') => break,
                                    Some(c) => w.push(c),
                                    None => return Err("unterminated '"),
                                }
                            }
                        }
                        '"' => {
                            chars.next();
                            loop {
                                match chars.next() {
                                    Some('"') => break,
                                    Some('\\') => match chars.next() {
                                        Some(c) => w.push(c),
                                        None => return Err("unterminated \""),
                                    },
                                    Some('$') if chars.peek() == Some(&'?') => {
                                        chars.next();
                                        w.push(STATUS_MARK);
                                    }
                                    Some(c) => w.push(c),
                                    None => return Err("unterminated \""),
                                }
                            }
                        }
                        '\\' => {
                            chars.next();
                            if let Some(c) = chars.next() {
                                w.push(c);
                            }
                        }
                        '$' => {
                            chars.next();
                            if chars.peek() == Some(&'?') {
                                chars.next();
                                w.push(STATUS_MARK);
                            } else {
                                w.push('$');
                            }
                        }
                        c => {
                            chars.next();
                            w.push(c);
                        }
                    }
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

impl Pipeline {
    /// Puts `status` where the line said `$?`.
    pub fn expand_status(&mut self, status: u64) {
        let text = alloc::format!("{status}");
        let expand = |w: &mut String| {
            if w.contains(STATUS_MARK) {
                *w = w.replace(STATUS_MARK, &text);
            }
        };
        for c in &mut self.commands {
            c.words.iter_mut().for_each(expand);
            c.input.iter_mut().for_each(expand);
            c.output.iter_mut().for_each(expand);
        }
    }
}

/// Parses a line into pipelines (split at `;` and `&`); `$?` stays a
/// [`STATUS_MARK`] until [`Pipeline::expand_status`].
pub fn parse(line: &str) -> Result<Vec<Pipeline>, &'static str> {
    let mut lists = Vec::new();
    let mut pipeline = Pipeline::default();
    let mut cmd = Command::default();
    let mut it = tokens(line)?.into_iter();
    let finish_cmd = |cmd: &mut Command, p: &mut Pipeline| -> Result<(), &'static str> {
        if cmd.words.is_empty() {
            if cmd.input.is_some() || cmd.output.is_some() || !p.commands.is_empty() {
                return Err("empty command");
            }
            return Ok(());
        }
        p.commands.push(core::mem::take(cmd));
        Ok(())
    };
    while let Some(t) = it.next() {
        match t {
            Token::Word(w) => cmd.words.push(w),
            Token::In | Token::Out | Token::Append => match it.next() {
                Some(Token::Word(f)) => match t {
                    Token::In => cmd.input = Some(f),
                    Token::Out => cmd.output = Some(f),
                    _ => {
                        cmd.output = Some(f);
                        cmd.append = true;
                    }
                },
                _ => return Err("redirection without a file"),
            },
            Token::Pipe => {
                if cmd.words.is_empty() {
                    return Err("empty command in pipeline");
                }
                finish_cmd(&mut cmd, &mut pipeline)?;
            }
            Token::Amp | Token::Semi => {
                finish_cmd(&mut cmd, &mut pipeline)?;
                if pipeline.commands.is_empty() {
                    if t == Token::Amp {
                        return Err("nothing to put in the background");
                    }
                    continue;
                }
                pipeline.background = t == Token::Amp;
                lists.push(core::mem::take(&mut pipeline));
            }
        }
    }
    finish_cmd(&mut cmd, &mut pipeline)?;
    if !pipeline.commands.is_empty() {
        lists.push(pipeline);
    }
    Ok(lists)
}

/// `run STACK -- PROGRAM ARGS` as the command line of the outermost
/// nester: `a,b -- p x` becomes `a -- b -- p x`.
pub fn stack_argv(stack: &str, rest: &[String]) -> Result<Vec<String>, &'static str> {
    let layers: Vec<&str> = stack.split(',').filter(|s| !s.is_empty()).collect();
    if layers.is_empty() || rest.is_empty() {
        return Err("usage: run NESTER[,NESTER...] -- PROGRAM [ARGS]");
    }
    let mut out = Vec::new();
    for l in layers {
        out.push(String::from(l));
        out.push(String::from("--"));
    }
    out.extend(rest.iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(p: &Pipeline, i: usize) -> Vec<&str> {
        p.commands[i].words.iter().map(|s| s.as_str()).collect()
    }

    #[test]
    fn pipelines_lists_and_quotes() {
        let mut l = parse("cat /etc/motd | wc -l; echo 'a  b' \"c $?\" &").unwrap();
        l[1].expand_status(3);
        assert_eq!(l.len(), 2);
        assert_eq!(words(&l[0], 0), ["cat", "/etc/motd"]);
        assert_eq!(words(&l[0], 1), ["wc", "-l"]);
        assert!(!l[0].background);
        assert_eq!(words(&l[1], 0), ["echo", "a  b", "c 3"]);
        assert!(l[1].background);
        let r = parse("sort < in > out").unwrap();
        assert_eq!(r[0].commands[0].input.as_deref(), Some("in"));
        assert_eq!(r[0].commands[0].output.as_deref(), Some("out"));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# comment").unwrap().is_empty());
    }

    #[test]
    fn errors() {
        assert!(parse("| wc").is_err());
        assert!(parse("a |").is_err());
        assert!(parse("echo 'x").is_err());
        assert!(parse("cat >").is_err());
        assert!(parse("&").is_err());
    }

    #[test]
    fn stacks() {
        let rest = [String::from("echo"), String::from("hi")];
        assert_eq!(stack_argv("passthru,passthru", &rest).unwrap(), ["passthru", "--", "passthru", "--", "echo", "hi"]);
        assert!(stack_argv("", &rest).is_err());
        assert!(stack_argv("passthru", &[]).is_err());
    }
}
