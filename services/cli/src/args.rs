//! Checking a command's arguments before it runs: a misspelt flag must not be ignored (a bench
//! run with `--duraton 5s` would run its 30 s default and say nothing), and a flag given its
//! value's place by mistake must not be taken as that value.

/// The flags a command accepts.
pub struct Flags<'a> {
    /// Flags followed by a value.
    pub valued: &'a [&'a str],
    /// Flags that stand alone.
    pub switches: &'a [&'a str],
    /// Flags whose value may be left out (taken only when it is a number).
    pub optional_number: &'a [&'a str],
}

/// Whether the arguments ask for help (anywhere: `complaints bench --help`).
pub fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

/// Every argument is a known flag, with its value where it needs one; says which is not.
pub fn check(args: &[String], flags: &Flags<'_>) -> Result<(), String> {
    let mut rest = args.iter().peekable();
    while let Some(arg) = rest.next() {
        let name = arg.as_str();
        if flags.valued.contains(&name) {
            match rest.next() {
                Some(value) if !value.starts_with("--") => {}
                _ => return Err(format!("{name} needs a value")),
            }
        } else if flags.optional_number.contains(&name) {
            if rest.peek().is_some_and(|v| v.parse::<f64>().is_ok()) {
                rest.next();
            }
        } else if !flags.switches.contains(&name) {
            return Err(if name.starts_with('-') {
                format!("unknown flag {name}")
            } else {
                format!("unexpected argument {name:?}")
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: Flags<'static> = Flags {
        valued: &["--clients", "--duration"],
        switches: &["--intake-only"],
        optional_number: &["--demo"],
    };

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn known_flags_with_their_values_pass() {
        assert_eq!(check(&args(""), &BENCH), Ok(()));
        assert_eq!(
            check(&args("--clients 32 --intake-only --duration 5s"), &BENCH),
            Ok(())
        );
        assert_eq!(check(&args("--demo"), &BENCH), Ok(()));
        assert_eq!(check(&args("--demo 8 --clients 2"), &BENCH), Ok(()));
        assert_eq!(check(&args("--demo --clients 2"), &BENCH), Ok(()));
    }

    #[test]
    fn a_misspelt_flag_a_missing_value_or_a_stray_argument_is_refused_by_name() {
        assert_eq!(
            check(&args("--duraton 5s"), &BENCH),
            Err("unknown flag --duraton".into())
        );
        assert_eq!(
            check(&args("--clients"), &BENCH),
            Err("--clients needs a value".into())
        );
        assert_eq!(
            check(&args("--clients --intake-only"), &BENCH),
            Err("--clients needs a value".into())
        );
        assert_eq!(
            check(&args("--intake-only 32"), &BENCH),
            Err("unexpected argument \"32\"".into())
        );
    }

    #[test]
    fn help_is_asked_for_anywhere_in_the_arguments() {
        assert!(wants_help(&args("--clients 4 --help")));
        assert!(wants_help(&args("-h")));
        assert!(!wants_help(&args("--clients 4")));
    }
}
