//! Templates that a shell will read, made inert by construction.
//!
//! Before a shell template is compiled, its literal text is read the way a POSIX shell
//! reads it, and every `{{ … }}` is classified by where it sits: unquoted (also inside
//! `$( )`), inside single quotes, or inside double quotes. Each is then rewritten to pass
//! its value through the quoting for that place, outside any filter the template applies,
//! so no filter (`safe`, `tojson`) can hand the shell raw text:
//!
//! | where | the value becomes |
//! |---|---|
//! | unquoted, `$( )` | one single-quoted word (`'it'\''s'`) |
//! | `'…'` | the quote closed, the value single-quoted, the quote reopened |
//! | `"…"` | the value with `\`, `$`, `` ` `` and `"` escaped |
//!
//! Places where no quoting makes a value inert are refused when the pack loads, naming the
//! place: backticks, heredocs, `${ }`, `$(( ))`, comments, right after a backslash. A
//! `{% … %}` tag must sit where the shell reads unquoted text, so every branch leaves the
//! shell in the same state.

use std::borrow::Cow;

/// Where an insertion sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Unquoted,
    SingleQuoted,
    DoubleQuoted,
}

impl Place {
    /// The template function that quotes for this place.
    fn function(self) -> &'static str {
        match self {
            Self::Unquoted => "__shell_word",
            Self::SingleQuoted => "__shell_in_single",
            Self::DoubleQuoted => "__shell_in_double",
        }
    }
}

/// What the shell is reading at a point of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Top level or inside `$( )` (with its parenthesis depth).
    Unquoted {
        subshell: bool,
        depth: u32,
    },
    Single,
    Double,
    /// Places an insertion is refused, with their name.
    Refused(&'static str, Option<String>),
}

/// Quotes `text` as one shell word; plain words are left as they are.
pub fn quote_word(text: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-+=:,./@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("'{}'", text.replace('\'', r"'\''")))
    }
}

/// For a value inside single quotes: close them, quote the value, reopen.
pub fn quote_in_single(text: &str) -> String {
    format!("'{}'", quote_word_always(text))
}

fn quote_word_always(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// For a value inside double quotes: the characters still special there, escaped.
pub fn quote_in_double(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '$' | '`' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The source with every `{{ expr }}` turned into `{{ <quote>((expr)) }}` for its place;
/// an error names a place that cannot be made safe.
pub fn rewrite(source: &str) -> Result<String, String> {
    let mut out = String::with_capacity(source.len() + 32);
    let mut stack = vec![State::Unquoted {
        subshell: false,
        depth: 0,
    }];
    let chars: Vec<char> = source.chars().collect();
    let mut i = 0;
    // Text since the last newline, to find a heredoc's delimiter line.
    let mut heredoc: Option<(String, bool)> = None;
    let mut pending_heredoc: Option<String> = None;
    let mut line = String::new();
    let mut escaped = false;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 3)].iter().collect();
        if rest.starts_with("{{") {
            let end = find_close(&chars, i + 2, "}}").ok_or("a `{{` without its `}}`")?;
            let expr: String = chars[i + 2..end].iter().collect();
            let place = match (stack.last(), &heredoc, escaped) {
                (_, Some(_), _) => return Err(refusal("a heredoc", &expr)),
                (_, _, true) => return Err(refusal("right after a backslash", &expr)),
                (Some(State::Unquoted { .. }), _, _) => Place::Unquoted,
                (Some(State::Single), _, _) => Place::SingleQuoted,
                (Some(State::Double), _, _) => Place::DoubleQuoted,
                (Some(State::Refused(name, _)), _, _) => return Err(refusal(name, &expr)),
                (None, _, _) => Place::Unquoted,
            };
            out.push_str(&format!(
                "{{{{ {}(({})) }}}}",
                place.function(),
                expr.trim()
            ));
            line.push('x');
            i = end + 2;
            continue;
        }
        if rest.starts_with("{%") || rest.starts_with("{#") {
            let close = if rest.starts_with("{%") { "%}" } else { "#}" };
            let end = find_close(&chars, i + 2, close)
                .ok_or_else(|| format!("a `{}` without its `{close}`", &rest[..2]))?;
            if rest.starts_with("{%")
                && !(matches!(
                    stack.last(),
                    Some(State::Unquoted {
                        subshell: false,
                        ..
                    })
                ) && heredoc.is_none()
                    && !escaped)
            {
                let tag: String = chars[i..end + 2].iter().collect();
                return Err(format!(
                    "the tag {tag} is inside quotes or a construct of the shell; put tags only where the shell reads unquoted text"
                ));
            }
            out.extend(&chars[i..end + 2]);
            i = end + 2;
            continue;
        }
        let c = chars[i];
        out.push(c);
        i += 1;
        if let Some((delimiter, _)) = &heredoc {
            if c == '\n' {
                let ended = line.trim_start_matches('\t') == delimiter.as_str();
                line.clear();
                if ended {
                    heredoc = None;
                }
            } else {
                line.push(c);
            }
            continue;
        }
        if c == '\n' {
            line.clear();
            if let Some(delimiter) = pending_heredoc.take() {
                heredoc = Some((delimiter, true));
            }
        } else {
            line.push(c);
        }
        if escaped {
            escaped = false;
            continue;
        }
        let next = chars.get(i).copied();
        let state = stack.last().cloned().unwrap_or(State::Unquoted {
            subshell: false,
            depth: 0,
        });
        match state {
            State::Single => {
                if c == '\'' {
                    stack.pop();
                }
            }
            State::Double => match c {
                '\\' => escaped = true,
                '"' => {
                    stack.pop();
                }
                '`' => stack.push(State::Refused("backticks", Some("`".into()))),
                '$' if matches!(next, Some('(' | '{')) => {
                    let (state, taken) = expansion(&chars[i..]);
                    out.extend(&chars[i..i + taken]);
                    i += taken;
                    stack.push(state);
                }
                _ => {}
            },
            State::Refused(_, Some(close)) => {
                if close.starts_with(c) {
                    if close.len() == 2 {
                        if next == close.chars().nth(1) {
                            i += 1;
                            out.push(close.chars().nth(1).unwrap_or_default());
                            stack.pop();
                        }
                    } else {
                        stack.pop();
                    }
                }
            }
            State::Refused(_, None) => {
                if c == '\n' {
                    stack.pop();
                }
            }
            State::Unquoted { subshell, depth } => match c {
                '\\' => escaped = true,
                '\'' => stack.push(State::Single),
                '"' => stack.push(State::Double),
                '`' => stack.push(State::Refused("backticks", Some("`".into()))),
                '#' if line.len() == 1
                    || line
                        .chars()
                        .rev()
                        .nth(1)
                        .is_some_and(|p| p.is_whitespace() || ";&|(".contains(p)) =>
                {
                    stack.push(State::Refused("a comment", None));
                }
                '$' if matches!(next, Some('(' | '{')) => {
                    let (state, taken) = expansion(&chars[i..]);
                    out.extend(&chars[i..i + taken]);
                    i += taken;
                    stack.push(state);
                }
                '(' => {
                    if let Some(State::Unquoted { depth, .. }) = stack.last_mut() {
                        *depth += 1;
                    }
                }
                ')' => {
                    if depth > 0 {
                        if let Some(State::Unquoted { depth, .. }) = stack.last_mut() {
                            *depth -= 1;
                        }
                    } else if subshell {
                        stack.pop();
                    }
                }
                '<' if next == Some('<') && chars.get(i + 1) != Some(&'<') => {
                    // `<<` or `<<-`, then the delimiter word, possibly quoted.
                    let mut j = i + 1;
                    if chars.get(j) == Some(&'-') {
                        j += 1;
                    }
                    while chars.get(j).is_some_and(|c| *c == ' ' || *c == '\t') {
                        j += 1;
                    }
                    let word: String = chars[j..]
                        .iter()
                        .take_while(|c| !c.is_whitespace() && !";&|<>()".contains(**c))
                        .collect();
                    let delimiter: String =
                        word.chars().filter(|c| !"'\"\\".contains(*c)).collect();
                    if delimiter.is_empty() {
                        return Err("a heredoc without a delimiter".into());
                    }
                    pending_heredoc = Some(delimiter);
                    out.extend(&chars[i..j + word.chars().count()]);
                    i = j + word.chars().count();
                }
                _ => {}
            },
        }
    }
    Ok(out)
}

/// What `$(`, `$((` or `${` opens, read from the characters after the `$`, and how many
/// of them it takes.
fn expansion(after_dollar: &[char]) -> (State, usize) {
    match after_dollar {
        ['(', '(', ..] => (State::Refused("$(( ))", Some("))".into())), 2),
        ['(', ..] => (
            State::Unquoted {
                subshell: true,
                depth: 0,
            },
            1,
        ),
        _ => (State::Refused("${ }", Some("}".into())), 1),
    }
}

fn refusal(place: &str, expr: &str) -> String {
    format!(
        "{{{{{expr}}}}} is in {place}, where the shell would read an inserted value as code; pass it as an environment variable ($SLUICE_PARAM_…) or move it outside"
    )
}

/// Where `close` ends the tag opened before `from`, skipping quoted strings in it.
fn find_close(chars: &[char], from: usize, close: &str) -> Option<usize> {
    let close: Vec<char> = close.chars().collect();
    let mut quote: Option<char> = None;
    let mut i = from;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(_) if c == '\\' => {
                i += 2;
                continue;
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if chars[i..].starts_with(&close) => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_insertion_is_quoted_for_where_it_sits() {
        assert_eq!(
            rewrite("echo {{ a }} '{{b}}' \"{{ c }}\" $(ls {{ d }})").unwrap(),
            "echo {{ __shell_word((a)) }} '{{ __shell_in_single((b)) }}' \"{{ __shell_in_double((c)) }}\" $(ls {{ __shell_word((d)) }})"
        );
        assert_eq!(
            rewrite("echo \"$(printf %s '{{ a }}')\"").unwrap(),
            "echo \"$(printf %s '{{ __shell_in_single((a)) }}')\""
        );
        // A quote inside the expression is the template's, not the shell's.
        assert_eq!(
            rewrite("echo {{ a | default('x}}') }} done").unwrap(),
            "echo {{ __shell_word((a | default('x}}'))) }} done"
        );
    }

    #[test]
    fn places_no_quoting_can_make_safe_are_refused_by_name() {
        for (source, place) in [
            ("echo `{{ a }}`", "backticks"),
            ("echo \"`{{ a }}`\"", "backticks"),
            ("cat <<EOF\n{{ a }}\nEOF\n", "a heredoc"),
            ("cat <<'EOF'\n{{ a }}\nEOF\n", "a heredoc"),
            ("echo ${x:-{{ a }}}", "${ }"),
            ("echo $(( {{ a }} + 1 ))", "$(( ))"),
            ("true # {{ a }}", "a comment"),
            ("echo \\{{ a }}", "right after a backslash"),
        ] {
            let err = rewrite(source).unwrap_err();
            assert!(err.contains(place), "{source}: {err}");
        }
        assert!(rewrite("cat <<EOF\nplain\nEOF\necho {{ a }}").is_ok());
        assert!(rewrite("echo '{% if a %}x{% endif %}'").is_err());
        assert!(rewrite("{% if a %}echo {{ a }}{% endif %}").is_ok());
        assert!(
            rewrite("echo a#{{ b }}").is_ok(),
            "# inside a word is no comment"
        );
    }
}
