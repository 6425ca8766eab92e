//! Man pages and shell completions are generated from the clap definitions and checked in;
//! these tests regenerate them in-process and fail on any difference.
//! Rewrite them with: `ZKLOCK_UPDATE_DOCS=1 cargo test --test it docs::`

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use zklock::cli::{self, Cli, DocSection, Examples};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rows(roff: &mut Roff, section: &DocSection) {
    for (term, text) in section.rows() {
        roff.control("TP", []).text([bold(term.as_str())]).text([roman(text)]);
    }
}

fn section(roff: &mut Roff, title: &str, section: &DocSection) {
    roff.control("SH", [title]);
    rows(roff, section);
}

fn examples(roff: &mut Roff, examples: &Examples) {
    roff.control("SH", ["EXAMPLES"]);
    for (what, cmd) in examples.0 {
        roff.control("PP", []).text([roman(*what)]);
        roff.control("RS", []).control("nf", []).text([bold(*cmd)]).control("fi", []).control("RE", []);
    }
}

fn see_also(roff: &mut Roff, pages: &[&str]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut parts = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        parts.push(bold(*page));
        parts.push(roman(if i + 1 < pages.len() { "(1), " } else { "(1)" }));
    }
    roff.text(parts);
}

/// One page: clap's title, name, synopsis, description and options, then `extra`.
fn page(cmd: clap::Command, title: &str, extra: impl FnOnce(&mut Roff)) -> String {
    let man = Man::new(cmd.clone())
        .title(title)
        .section("1")
        .date(format!("zklock {}", env!("CARGO_PKG_VERSION")))
        .source("zklock")
        .manual("User Commands");
    let mut out = Vec::new();
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    man.render_description_section(&mut out).unwrap();
    man.render_options_section(&mut out).unwrap();
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out).unwrap();
    }
    let mut roff = Roff::new();
    extra(&mut roff);
    out.extend(roff.render().into_bytes());
    man.render_version_section(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn safety(roff: &mut Roff) {
    roff.control("SH", ["SAFETY MODEL"]);
    roff.text([roman(cli::SAFETY_BRIEF)]);
}

/// Every generated file: (path relative to the project root, contents).
fn generated() -> Vec<(&'static str, Vec<u8>)> {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let sub = |name: &str| top.find_subcommand(name).unwrap().clone();

    let zklock = page(top.clone(), "ZKLOCK", |r| {
        r.control("SH", ["EXIT STATUS"]);
        r.text([italic("zklock run")]);
        rows(r, &cli::RUN_EXIT_STATUS);
        r.control("PP", []).text([italic("zklock status")]);
        rows(r, &cli::STATUS_EXIT_STATUS);
        r.control("SH", ["ENVIRONMENT"]);
        r.text([italic(cli::RUN_ENV_GIVEN.title)]);
        rows(r, &cli::RUN_ENV_GIVEN);
        r.control("PP", []).text([italic(cli::ENV_READ.title)]);
        rows(r, &cli::ENV_READ);
        examples(r, &cli::TOP_EXAMPLES);
        safety(r);
        see_also(r, &["zklock-run", "zklock-status", "flock"]);
    });
    let run = page(sub("run"), "ZKLOCK-RUN", |r| {
        section(r, "EXIT STATUS", &cli::RUN_EXIT_STATUS);
        r.control("SH", ["ENVIRONMENT"]);
        r.text([italic(cli::RUN_ENV_GIVEN.title)]);
        rows(r, &cli::RUN_ENV_GIVEN);
        r.control("PP", []).text([italic(cli::ENV_READ.title)]);
        rows(r, &cli::ENV_READ);
        examples(r, &cli::RUN_EXAMPLES);
        safety(r);
        see_also(r, &["zklock", "zklock-status", "flock"]);
    });
    let status = page(sub("status"), "ZKLOCK-STATUS", |r| {
        section(r, "EXIT STATUS", &cli::STATUS_EXIT_STATUS);
        section(r, "ENVIRONMENT", &cli::ENV_READ);
        r.control("SH", ["JSON OUTPUT"]);
        r.text([roman(
            "--json prints {\"zklock_status\": 1, \"generated_at\": ..., \"locks\": [...]}; each lock has path, exists, \
             held, holder, waiters (queue order) and other_nodes; each holder or waiter has node, kind, sequence, \
             position, session_id, fencing_token, joined_at, joined_seconds_ago, since, seconds, host, pid, user, \
             label, command, zklock_version and data. The README documents every field.",
        )]);
        examples(r, &cli::STATUS_EXAMPLES);
        safety(r);
        see_also(r, &["zklock", "zklock-run"]);
    });

    let mut files = vec![
        ("man/zklock.1", zklock.into_bytes()),
        ("man/zklock-run.1", run.into_bytes()),
        ("man/zklock-status.1", status.into_bytes()),
    ];
    for (shell, path) in [
        (Shell::Bash, "completions/zklock.bash"),
        (Shell::Zsh, "completions/_zklock"),
        (Shell::Fish, "completions/zklock.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "zklock", &mut buf);
        files.push((path, buf));
    }
    files
}

#[test]
fn generated_docs_are_current() {
    let update = std::env::var_os("ZKLOCK_UPDATE_DOCS").is_some();
    let mut stale = Vec::new();
    for (rel, contents) in generated() {
        let path = root().join(rel);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &contents).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&contents[..]) {
            stale.push(rel);
        }
    }
    assert!(stale.is_empty(), "out of date: {stale:?}; rewrite with ZKLOCK_UPDATE_DOCS=1 cargo test --test it docs::");
}

/// The README's exit-status tables (run's and status's) are made from the same type as
/// `--help` and the man pages.
#[test]
fn readme_exit_tables_are_the_type() {
    use zklock::exit::{markdown_table, Exit};
    let path = root().join("README.md");
    let mut readme = std::fs::read_to_string(&path).unwrap();
    for (marker, table) in [("exit-status", &Exit::RUN[..]), ("status-exit-status", &Exit::STATUS[..])] {
        let start = format!("<!-- {marker}: made from src/exit.rs by the docs tests -->\n");
        let end = format!("<!-- /{marker} -->");
        let a = readme.find(&start).unwrap_or_else(|| panic!("README has the {marker} markers")) + start.len();
        let b = a + readme[a..].find(&end).expect("README has the end marker");
        let table = markdown_table(table);
        if std::env::var_os("ZKLOCK_UPDATE_DOCS").is_some() {
            readme = format!("{}{table}{}", &readme[..a], &readme[b..]);
        } else {
            assert_eq!(
                &readme[a..b],
                table,
                "README's {marker} table is out of date; rewrite with ZKLOCK_UPDATE_DOCS=1"
            );
        }
    }
    if std::env::var_os("ZKLOCK_UPDATE_DOCS").is_some() {
        std::fs::write(&path, readme).unwrap();
    }
}

#[test]
fn man_pages_render_cleanly_with_the_documented_sections() {
    for (rel, needles) in [
        (
            "man/zklock.1",
            &[
                "SUBCOMMANDS",
                "EXIT STATUS",
                "124",
                "ENVIRONMENT",
                "ZKLOCK_ZK",
                "ZKLOCK_FENCING_TOKEN",
                "SAFETY MODEL",
                "EXAMPLES",
            ][..],
        ),
        ("man/zklock-run.1", &["EXIT STATUS", "124", "ZKLOCK_FENCING_TOKEN", "--disconnect-threshold", "SAFETY MODEL"]),
        ("man/zklock-status.1", &["EXIT STATUS", "--recursive", "JSON OUTPUT", "EXAMPLES", "SAFETY MODEL"]),
    ] {
        let page = root().join(rel);
        // man -l renders the page as a user sees it; warnings from groff go to stderr.
        let out =
            Command::new("man").arg("-l").arg(&page).env("MANWIDTH", "100").env("MAN_KEEP_FORMATTING", "0").output();
        let Ok(out) = out else { panic!("man is needed to check {rel}") };
        let text = strip_overstrike(&String::from_utf8_lossy(&out.stdout));
        assert!(out.status.success(), "{rel}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{rel} renders with warnings");
        for needle in needles {
            assert!(text.contains(needle), "{rel} lacks {needle}:\n{text}");
        }
        let lint = Command::new("groff").args(["-man", "-ww", "-z"]).arg(&page).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&lint.stderr), "", "{rel}: groff warnings");
    }
}

/// Removes the backspace overstrikes (bold, underline) that man writes when not on a terminal.
fn strip_overstrike(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

fn bash_complete(line: &str) -> Vec<String> {
    let script = root().join("completions/zklock.bash");
    // Load the completion in a real bash and ask it, as readline would.
    let words: Vec<&str> = line.split(' ').collect();
    let prog = format!(
        r#"source "{}" && complete -p zklock >/dev/null && COMP_WORDS=({}) && COMP_CWORD={} && COMP_LINE="{line}" && COMP_POINT=${{#COMP_LINE}} && _zklock zklock "{}" "{}" && printf '%s\n' "${{COMPREPLY[@]}}""#,
        script.display(),
        words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash").arg("--norc").arg("-c").arg(prog).output().unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completion_works_in_a_real_bash() {
    let out = Command::new("bash")
        .arg("--norc")
        .arg("-c")
        .arg(format!("source {} && complete -p zklock", root().join("completions/zklock.bash").display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("_zklock"), "complete -p zklock: {out:?}");
    assert_eq!(bash_complete("zklock r"), vec!["run".to_string()]);
    assert_eq!(bash_complete("zklock st"), vec!["status".to_string()]);
    let opts = bash_complete("zklock run --no");
    assert!(opts.contains(&"--no-wait".to_string()), "{opts:?}");
}

#[test]
fn every_generated_file_exists_in_the_package_metadata() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for (rel, _) in generated() {
        assert!(manifest.contains(&format!("\"{rel}\"")), "{rel} is not packaged in Cargo.toml");
    }
    assert!(Path::new(&root().join("man")).is_dir());
}
