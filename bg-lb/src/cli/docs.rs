//! Shell completions and the man page, generated from the clap definition in
//! [`crate::cli`] so they can never drift from the real command line.
//!
//! The man page is one page, `bg-lb(1)`, with a section per command
//! (`bg-lb ctl ratio`, ...): `bg-lb man > bg-lb.1` is all a package needs to
//! install, and `man bg-lb` then documents every subcommand. (clap_mangen's
//! own layout is a page per subcommand whose SUBCOMMANDS section points at
//! the others; a single page avoids shipping a dozen small files.)

use std::{
    collections::HashSet,
    io::{self, Write},
};

use clap::CommandFactory as _;
use clap_complete::Shell;
use clap_mangen::Man;

use crate::cli::Cli;

/// The program name completions and the man page use, whatever the binary
/// running them is called (the tests run it as `bg-lb-under-test`).
const BIN: &str = "bg-lb";

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut script);
    out.write_all(&script)
}

/// Writes the man page (roff): the top-level sections, then for each command
/// (depth first) its synopsis, description and options as subsections.
pub fn man_page(out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building fills in what the page shows: bin names such as
    // "bg-lb ctl ratio" in the synopses, and the version.
    cmd.build();
    let top = Man::new(cmd.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    for sub in visible_subcommands(&cmd) {
        render_command(sub, &mut page)?;
    }
    top.render_version_section(&mut page)?;
    out.write_all(drop_repeated_preamble(&String::from_utf8_lossy(&page)).as_bytes())
}

/// One `.SH "bg-lb ctl ratio"` section per command, its parts as `.SS`.
fn render_command(cmd: &clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
    writeln!(out, ".SH \"{}\"", name.replace('-', "\\-"))?;
    let man = Man::new(cmd.clone());
    let mut body = Vec::new();
    man.render_synopsis_section(&mut body)?;
    man.render_description_section(&mut body)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut body)?;
    }
    out.write_all(&demote_sections(&String::from_utf8_lossy(&body)).into_bytes())?;
    for sub in visible_subcommands(cmd) {
        render_command(sub, out)?;
    }
    Ok(())
}

fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    // The help subcommand of nested commands survives
    // `disable_help_subcommand` on the root; it needs no section.
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// Each piece clap_mangen renders starts with the same two-line string
/// definition (`.ie \n(.g .ds Aq ...`); the page needs it once, at the top.
fn drop_repeated_preamble(roff: &str) -> String {
    let mut seen = HashSet::new();
    roff.lines()
        .filter(|line| {
            let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
            !preamble || seen.insert(*line)
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Turns `.SH` headings into `.SS` subsections. Text lines that start with a
/// dot are escaped by roff (`\&.`), so only real headings match.
fn demote_sections(roff: &str) -> String {
    roff.lines()
        .map(|line| match line.strip_prefix(".SH ") {
            Some(heading) => format!(".SS {heading}\n"),
            None => format!("{line}\n"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    fn completion_script(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out).expect("generate completions");
        String::from_utf8(out).expect("UTF-8 script")
    }

    #[test]
    fn completions_for_bash_zsh_and_fish_complete_the_ctl_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completion_script(shell);
            // fish spells options `-l socket`, the others `--socket`.
            for word in ["bg-lb", "ctl", "ratio", "drain", "wait-drained", "socket"] {
                assert!(script.contains(word), "{shell} completions lack {word:?}");
            }
        }
    }

    #[test]
    fn bash_completion_script_is_valid_bash() {
        let script = completion_script(Shell::Bash);
        let out = Command::new("bash")
            .args(["-n", "-c", &script])
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "bash -n rejects the script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn man_page_text() -> String {
        let mut out = Vec::new();
        man_page(&mut out).expect("render the man page");
        String::from_utf8(out).expect("UTF-8 roff")
    }

    #[test]
    fn man_page_has_a_section_per_ctl_subcommand() {
        let page = man_page_text();
        assert_eq!(page.matches(".TH bg-lb 1 ").count(), 1, "{page}");
        assert_eq!(page.matches(".ds Aq").count(), 2, "one preamble:\n{page}");
        for command in [
            "bg\\-lb run",
            "bg\\-lb ctl",
            "bg\\-lb ctl status",
            "bg\\-lb ctl ratio",
            "bg\\-lb ctl drain",
            "bg\\-lb ctl wait\\-drained",
            "bg\\-lb ctl backend weight",
            "bg\\-lb ctl flows",
            "bg\\-lb ctl reload",
            "bg\\-lb completions",
        ] {
            assert!(
                page.contains(&format!(".SH \"{command}\"\n")),
                "no section for {command}:\n{page}"
            );
        }
        assert!(!page.contains("\"bg\\-lb help\""), "help needs no section");
    }

    /// The page goes through the real formatter (groff, from Debian's
    /// groff-base, which `cargo xtask setup` installs) with warnings on.
    #[test]
    fn man_page_renders_with_groff_without_warnings() {
        let mut groff = Command::new("groff")
            // Plain ASCII, no bold/underline overstriking, all warnings.
            .args(["-man", "-Tascii", "-P-cbou", "-ww"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run groff (Debian package groff-base; `cargo xtask setup` installs it)");
        groff
            .stdin
            .take()
            .expect("stdin")
            .write_all(man_page_text().as_bytes())
            .expect("feed groff");
        let out = groff.wait_with_output().expect("groff output");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("bg-lb ctl ratio"), "{text}");
        assert!(text.contains("BLUE:GREEN"), "{text}");
    }

    #[test]
    fn only_headings_are_demoted() {
        assert_eq!(
            demote_sections(".SH SYNOPSIS\n\\&.SH text\nplain\n"),
            ".SS SYNOPSIS\n\\&.SH text\nplain\n"
        );
    }
}
