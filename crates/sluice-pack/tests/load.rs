//! Loading real pack directories: the bundled packs, and broken ones whose errors must name
//! the file and field at fault.

use std::path::{Path, PathBuf};

use serde_json::json;
use sluice_pack::load_packs;

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs")
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A directory of packs: the bundled ones plus a pack `t` built from `files`.
fn with_pack(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t/pack.yaml", "ref: t\n");
    for (rel, text) in files {
        write(dir.path(), &format!("t/{rel}"), text);
    }
    let roots = vec![bundled(), dir.path().to_owned()];
    (dir, roots)
}

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    let (_dir, roots) = with_pack(files);
    load_packs(&roots)
        .expect_err("pack should not load")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn bundled_packs_load() {
    let catalog = load_packs(&[bundled()]).unwrap();
    for action in [
        "core.noop",
        "core.echo",
        "core.local",
        "core.local_script",
        "core.sleep",
        "core.http",
        "examples.diagnose",
        "examples.summarise",
        "examples.deploy",
        "examples.deploy_all",
    ] {
        assert!(
            catalog.action(&action.parse().unwrap()).is_some(),
            "{action} missing"
        );
    }
    assert!(catalog.triggers.contains_key("examples.alert"));
    assert_eq!(catalog.rules_for("examples.alert").count(), 3);
}

#[test]
fn bundled_rules_match_as_documented() {
    let catalog = load_packs(&[bundled()]).unwrap();
    let fired = |payload: serde_json::Value| -> Vec<String> {
        catalog
            .rules_for("examples.alert")
            .filter(|rule| rule.criteria.iter().all(|c| c.matches(&payload)))
            .map(|rule| rule.rule_ref.clone())
            .collect()
    };
    assert_eq!(
        fired(json!({"host": "db1", "severity": "critical"})),
        [
            "examples.diagnose_critical",
            "examples.log_alert",
            "examples.summarise_warnings"
        ]
    );
    assert_eq!(
        fired(json!({"host": "web1", "severity": "info"})),
        ["examples.log_alert"]
    );
    let trigger = &catalog.triggers["examples.alert"];
    assert!(
        trigger
            .validate_payload(&json!({"host": "db1", "severity": "critical"}))
            .is_ok()
    );
    let err = trigger
        .validate_payload(&json!({"host": "db1", "severity": "bad"}))
        .unwrap_err();
    assert!(err.contains("/severity"), "{err}");
}

#[test]
fn a_rule_naming_an_unknown_action_fails_at_load_time() {
    let errs = errors(&[(
        "rules/r.yaml",
        "name: r\ntrigger: {type: examples.alert}\naction: {ref: core.nope}\n",
    )]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].ends_with("t/rules/r.yaml: action.ref: unknown action core.nope"),
        "{errs:?}"
    );
}

#[test]
fn a_rule_naming_an_unknown_trigger_or_operator_is_reported() {
    let errs = errors(&[(
        "rules/r.yaml",
        "name: r\ntrigger: {type: t.nothing}\ncriteria:\n  trigger.x: {type: equal, pattern: 1}\naction: {ref: core.noop}\n",
    )]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("r.yaml: trigger.type: unknown trigger \"t.nothing\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("r.yaml: criteria.trigger.x: unknown operator \"equal\"")),
        "{errs:?}"
    );
}

#[test]
fn rule_parameters_are_checked_against_the_action() {
    let errs = errors(&[(
        "rules/r.yaml",
        "name: r\ntrigger: {type: examples.alert}\naction:\n  ref: core.local\n  parameters:\n    command: ls\n",
    )]);
    assert!(
        errs.iter().any(|e| e
            .contains("action.parameters.command: action core.local has no parameter \"command\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("action.parameters: action core.local requires parameter \"cmd\"")),
        "{errs:?}"
    );
    let errs = errors(&[(
        "rules/r.yaml",
        "name: r\ntrigger: {type: examples.alert}\naction:\n  ref: core.local\n  parameters:\n    cmd: \"echo {{ trigger.host \"\n",
    )]);
    assert!(
        errs.iter()
            .any(|e| e.contains("action.parameters.cmd: invalid template")),
        "{errs:?}"
    );
}

#[test]
fn broken_action_files_name_file_and_field() {
    let errs = errors(&[
        ("actions/a.yaml", "name: a\nrunner_type: local-shel-cmd\n"),
        ("actions/b.yaml", "runner_type: noop\n"),
        (
            "actions/c.yaml",
            "name: c\nrunner_type: python-script\nentry_point: missing.py\n",
        ),
        (
            "actions/d.yaml",
            "name: d\nrunner_type: noop\nparameters:\n  n: {type: integer, default: many}\n",
        ),
        (
            "actions/e.yaml",
            "name: e\nrunner_type: noop\nparameters:\n  n: {type: int}\n",
        ),
    ]);
    let find = |needle: &str| errs.iter().any(|e| e.contains(needle));
    assert!(
        find("t/actions/a.yaml: runner_type: unknown variant `local-shel-cmd`"),
        "{errs:#?}"
    );
    assert!(find("t/actions/b.yaml: missing field `name`"), "{errs:#?}");
    assert!(
        find("t/actions/c.yaml: entry_point: file ") && find("missing.py does not exist"),
        "{errs:#?}"
    );
    assert!(
        find("t/actions/d.yaml: parameters.n.default: default does not fit"),
        "{errs:#?}"
    );
    assert!(
        find("t/actions/e.yaml: parameters.n.type: unknown variant `int`"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn broken_trigger_schema_and_yaml_are_reported() {
    let errs = errors(&[
        ("triggers/x.yaml", "name: x\npayload_schema: {type: 12}\n"),
        ("triggers/y.yaml", "name: y\n  bad: [indent\n"),
    ]);
    assert!(
        errs.iter()
            .any(|e| e.contains("t/triggers/x.yaml: payload_schema: not a valid JSON Schema")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("t/triggers/y.yaml: ")),
        "{errs:#?}"
    );
}

#[test]
fn a_missing_packs_directory_is_an_error() {
    let err = load_packs(&[PathBuf::from("/nonexistent/packs")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/packs: cannot read packs directory"),
        "{err}"
    );
}

const KEYED_ACTION: &str = "name: deploy\nrunner_type: noop\nparameters:\n  host: {type: string}\n";

#[test]
fn policies_from_the_action_file_and_from_stackstorm_policy_files() {
    let (_dir, roots) = with_pack(&[
        (
            "actions/a.yaml",
            "name: a\nrunner_type: noop\npolicy:\n  max_concurrent: 3\n  on_full: cancel\n  rate_limit: {count: 10, per_seconds: 1}\n  max_queue: 100\n  retry_on_worker_loss: true\n",
        ),
        ("actions/deploy.yaml", KEYED_ACTION),
        (
            "policies/deploy.yaml",
            "name: deploy.concurrency\nresource_ref: t.deploy\npolicy_type: action.concurrency.attr\nparameters:\n  threshold: 1\n  action: delay\n  attributes: [host]\n",
        ),
    ]);
    let catalog = load_packs(&roots).unwrap();
    let a = &catalog.actions[&"t.a".parse().unwrap()].policy;
    assert_eq!(a.max_concurrent, Some(3));
    assert_eq!(a.on_full, sluice_pack::model::OnFull::Cancel);
    assert_eq!(a.rate_limit.unwrap().count, 10);
    assert_eq!(a.max_queue, Some(100));
    assert!(a.retry_on_worker_loss);
    let deploy = &catalog.actions[&"t.deploy".parse().unwrap()];
    assert_eq!(deploy.policy.max_concurrent, Some(1));
    assert_eq!(deploy.policy.concurrency_key, ["host"]);
    let params = json!({"host": "db1"}).as_object().unwrap().clone();
    assert_eq!(deploy.concurrency_key(&params), r#"["db1"]"#);
}

#[test]
fn broken_policies_name_file_and_field() {
    let errs = errors(&[
        (
            "actions/a.yaml",
            "name: a\nrunner_type: noop\npolicy:\n  max_concurrent: 0\n  concurrency_key: [nope]\n  rate_limit: {count: 0, per_seconds: 1}\n",
        ),
        (
            "actions/b.yaml",
            "name: b\nrunner_type: noop\npolicy:\n  max_concurent: 2\n",
        ),
        ("actions/deploy.yaml", KEYED_ACTION),
        (
            "policies/p.yaml",
            "name: p\nresource_ref: t.missing\npolicy_type: action.concurrency\nparameters: {threshold: 1}\n",
        ),
        (
            "policies/q.yaml",
            "name: q\nresource_ref: t.deploy\npolicy_type: action.timeout\nparameters: {threshold: 1}\n",
        ),
        (
            "policies/r.yaml",
            "name: r\nresource_ref: t.deploy\npolicy_type: action.concurrency\nparameters: {threshold: 1, action: drop}\n",
        ),
    ]);
    let find = |needle: &str| errs.iter().any(|e| e.contains(needle));
    assert!(
        find("t/actions/a.yaml: policy.max_concurrent: must be at least 1"),
        "{errs:#?}"
    );
    assert!(
        find("t/actions/a.yaml: policy.concurrency_key: \"nope\" is not a parameter"),
        "{errs:#?}"
    );
    assert!(
        find("t/actions/a.yaml: policy.rate_limit: count must be at least 1"),
        "{errs:#?}"
    );
    assert!(
        find("t/actions/b.yaml: policy: unknown field `max_concurent`"),
        "{errs:#?}"
    );
    assert!(
        find("t/policies/p.yaml: resource_ref: unknown action \"t.missing\""),
        "{errs:#?}"
    );
    assert!(
        find("t/policies/q.yaml: policy_type: unsupported policy_type \"action.timeout\""),
        "{errs:#?}"
    );
    assert!(
        find("t/policies/r.yaml: parameters.action: \"drop\" is not delay or cancel"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 7, "{errs:#?}");
}

/// A workflow action `t.<name>` with its workflow file.
fn workflow(name: &str, flow: &str) -> [(String, String); 2] {
    [
        (
            format!("actions/{name}.yaml"),
            format!(
                "name: {name}\nrunner_type: orquesta\nentry_point: workflows/{name}.yaml\nparameters:\n  regions: {{type: array}}\n"
            ),
        ),
        (format!("actions/workflows/{name}.yaml"), flow.to_owned()),
    ]
}

fn workflow_errors(flows: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(String, String)> = flows
        .iter()
        .flat_map(|(name, flow)| workflow(name, flow))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    errors(&refs)
}

#[test]
fn the_bundled_example_workflow_loads() {
    let catalog = load_packs(&[bundled()]).unwrap();
    let action = catalog
        .action(&"examples.deploy_all".parse().unwrap())
        .unwrap();
    let flow = action.workflow.as_ref().expect("its workflow is loaded");
    assert_eq!(flow.start, ["each_region"]);
    assert!(flow.tasks["each_region"].with.is_some());
}

#[test]
fn broken_workflows_name_file_task_and_field() {
    let errs = workflow_errors(&[
        (
            "unknown_task",
            "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: [b, nowhere]\n  b:\n    action: core.noop\n",
        ),
        (
            "cycle",
            "version: 1.0\ntasks:\n  start:\n    action: core.noop\n    next: [{do: [ping]}]\n  ping:\n    action: core.noop\n    next: [{do: [pong]}]\n  pong:\n    action: core.noop\n    next: [{do: [ping]}]\n",
        ),
        (
            "bad_template",
            "version: 1.0\ntasks:\n  a:\n    action: core.echo\n    input: {message: \"{{ ctx().x \"}\n",
        ),
        (
            "bad_refs",
            "version: 1.0\ninput: [regions, colour]\ntasks:\n  a:\n    action: core.nothing\n  b:\n    action: core.echo\n    input: {message: hi, volume: 11}\n  c:\n    action: core.local\n    join: 3\n    with: {items: \"{{ ctx().regions }}\", concurrency: 0}\n",
        ),
        (
            "no_start",
            "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next: [{when: \"{{ succeeded() }}\", do: [b]}]\n  b:\n    action: core.noop\n    next: [{when: \"{{ failed() }}\", do: [a]}]\n",
        ),
    ]);
    let find = |needle: &str| errs.iter().any(|e| e.contains(needle));
    assert!(
        find(
            "workflows/unknown_task.yaml: tasks.a.next[0].do: unknown task \"nowhere\" (tasks: a, b)"
        ),
        "{errs:#?}"
    );
    assert!(
        find("workflows/cycle.yaml: tasks.ping: the cycle ping -> pong has no way out"),
        "{errs:#?}"
    );
    assert!(
        find("workflows/bad_template.yaml: tasks.a.input.message: invalid template"),
        "{errs:#?}"
    );
    assert!(
        find(
            "workflows/bad_refs.yaml: input[1]: \"colour\" is not a parameter of action t.bad_refs"
        ),
        "{errs:#?}"
    );
    assert!(
        find("workflows/bad_refs.yaml: tasks.a.action: unknown action core.nothing"),
        "{errs:#?}"
    );
    assert!(
        find(
            "workflows/bad_refs.yaml: tasks.b.input.volume: action core.echo has no parameter \"volume\""
        ),
        "{errs:#?}"
    );
    assert!(
        find(
            "workflows/bad_refs.yaml: tasks.c.input: action core.local requires parameter \"cmd\""
        ),
        "{errs:#?}"
    );
    assert!(
        find("workflows/bad_refs.yaml: tasks.c.with.concurrency: must be at least 1"),
        "{errs:#?}"
    );
    assert!(
        find("workflows/bad_refs.yaml: tasks.c.join: waits for 3 inbound transitions but only 0"),
        "{errs:#?}"
    );
    assert!(
        find("workflows/no_start.yaml: tasks: no task to start with"),
        "{errs:#?}"
    );
    // A loop with a conditional way out is allowed: only `cycle` is reported as one.
    assert_eq!(
        errs.iter().filter(|e| e.contains("no way out")).count(),
        1,
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 10, "{errs:#?}");
}

#[test]
fn a_missing_workflow_file_is_named() {
    let errs = errors(&[(
        "actions/w.yaml",
        "name: w\nrunner_type: workflow\nentry_point: workflows/w.yaml\n",
    )]);
    assert!(
        errs.iter()
            .any(|e| e.contains("t/actions/w.yaml: entry_point: file ")
                && e.contains("workflows/w.yaml does not exist")),
        "{errs:#?}"
    );
}

#[test]
fn an_entry_point_outside_its_pack_is_refused_by_file_and_field() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("evil.sh"), "touch pwned\n").unwrap();
    let (dir, roots) = with_pack(&[
        (
            "actions/up.yaml",
            "name: up\nrunner_type: local-shell-script\nentry_point: ../../../../../../../../etc/passwd\n",
        ),
        (
            "actions/abs.yaml",
            "name: abs\nrunner_type: python-script\nentry_point: /etc/passwd\n",
        ),
        (
            "actions/link.yaml",
            "name: link\nrunner_type: local-shell-script\nentry_point: link.sh\n",
        ),
        (
            "actions/flow.yaml",
            "name: flow\nrunner_type: orquesta\nentry_point: ../../flow.yaml\n",
        ),
    ]);
    std::os::unix::fs::symlink(
        outside.path().join("evil.sh"),
        dir.path().join("t/actions/link.sh"),
    )
    .unwrap();
    write(dir.path(), "flow.yaml", "version: 1.0\ntasks: {}\n");
    let errs: Vec<String> = load_packs(&roots)
        .expect_err("pack should not load")
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    for (file, why) in [
        ("t/actions/up.yaml: entry_point: ", "outside the pack"),
        ("t/actions/abs.yaml: entry_point: ", "is an absolute path"),
        ("t/actions/link.yaml: entry_point: ", "outside the pack"),
        ("t/actions/flow.yaml: entry_point: ", "outside the pack"),
    ] {
        assert!(
            errs.iter().any(|e| e.contains(file) && e.contains(why)),
            "{file} {why}: {errs:#?}"
        );
    }
    assert!(
        !errs.iter().any(|e| e.contains("root:")),
        "a file outside the pack was read: {errs:#?}"
    );
}

/// One broken pack is left out whole and reported with every problem; a pack that needs it
/// is left out in turn; the others load.
#[test]
fn a_broken_pack_is_left_out_and_reported_and_the_others_load() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad/pack.yaml", "ref: bad\nversion: 1.0.0\n");
    write(
        dir.path(),
        "bad/actions/fine.yaml",
        "name: fine\nrunner_type: noop\n",
    );
    write(
        dir.path(),
        "bad/rules/r.yaml",
        "name: r\ntrigger: {type: examples.alert}\naction: {ref: core.nope}\n",
    );
    write(
        dir.path(),
        "bad/actions/worse.yaml",
        "name: worse\nrunner_type: telepathy\n",
    );
    write(dir.path(), "needs/pack.yaml", "ref: needs\n");
    write(
        dir.path(),
        "needs/rules/uses.yaml",
        "name: uses\ntrigger: {type: examples.alert}\naction: {ref: bad.fine}\n",
    );
    write(dir.path(), "good/pack.yaml", "ref: good\n");
    write(
        dir.path(),
        "good/actions/works.yaml",
        "name: works\nrunner_type: noop\n",
    );
    let roots = [bundled(), dir.path().to_owned()];
    assert!(
        load_packs(&roots).is_err(),
        "the strict load refuses it all"
    );

    let catalog = sluice_pack::load_packs_reporting(&roots);
    assert!(catalog.action(&"good.works".parse().unwrap()).is_some());
    assert!(catalog.action(&"core.local".parse().unwrap()).is_some());
    assert!(catalog.action(&"bad.fine".parse().unwrap()).is_none());
    assert!(!catalog.packs.contains_key("bad") && !catalog.packs.contains_key("needs"));
    let broken: Vec<(&str, Vec<String>)> = catalog
        .broken
        .iter()
        .map(|b| {
            (
                b.name.as_str(),
                b.errors.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(broken.len(), 2, "{broken:#?}");
    let (name, problems) = &broken[0];
    assert_eq!(*name, "bad");
    assert_eq!(
        problems.len(),
        2,
        "every problem of the pack: {problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("bad/rules/r.yaml: action.ref: unknown action core.nope")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("bad/actions/worse.yaml")),
        "{problems:#?}"
    );
    let (name, problems) = &broken[1];
    assert_eq!(*name, "needs");
    assert!(
        problems[0].contains("needs/rules/uses.yaml: action.ref: unknown action bad.fine"),
        "{problems:#?}"
    );
}

#[test]
fn parameters_take_stackstorm_s_json_schema_keywords_and_values_must_satisfy_them() {
    let (_dir, roots) = with_pack(&[(
        "actions/deploy.yaml",
        "name: deploy\nrunner_type: noop\nparameters:\n  count: {type: integer, minimum: 1, maximum: 10, default: 2}\n  hosts: {type: array, items: {type: string}, minItems: 1}\n  region: {type: string, pattern: '^[a-z]+-[0-9]$', maxLength: 12}\n  pin: {type: string, secret: true, minLength: 4}\n",
    )]);
    let catalog = load_packs(&roots).unwrap();
    let action = catalog.action(&"t.deploy".parse().unwrap()).unwrap();
    let resolve = |given: serde_json::Value| {
        sluice_pack::params::resolve(action, given.as_object().unwrap().clone())
    };
    let fine = resolve(json!({"hosts": ["db1"], "region": "eu-1", "pin": "1234"})).unwrap();
    assert_eq!(fine["count"], json!(2));

    let problems = resolve(json!({"count": 11, "hosts": [], "region": "EU", "pin": "12"}))
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    let about = |name: &str| {
        problems
            .iter()
            .find(|e| e.starts_with(&format!("parameter \"{name}\"")))
            .unwrap_or_else(|| panic!("nothing about {name}: {problems:?}"))
            .clone()
    };
    assert!(about("count").contains("11"), "{problems:?}");
    assert!(about("hosts").contains("[]"), "{problems:?}");
    assert!(about("region").contains("EU"), "{problems:?}");
    let pin = about("pin");
    assert!(!pin.contains("12"), "a secret value is never quoted: {pin}");

    let broken = errors(&[
        (
            "actions/bad.yaml",
            "name: bad\nrunner_type: noop\nparameters:\n  n: {type: integer, minimum: low}\n  m: {type: integer, minimum: 5, default: 1}\n",
        ),
        (
            "actions/typo.yaml",
            "name: typo\nrunner_type: noop\nparameters:\n  t: {type: string, maxLenght: 3}\n",
        ),
    ]);
    assert!(
        broken.iter().any(|e| e.contains("parameters.n")),
        "{broken:?}"
    );
    assert!(
        broken.iter().any(|e| e.contains("parameters.m.default")),
        "{broken:?}"
    );
    assert!(
        broken.iter().any(|e| e.contains("maxLenght")),
        "an unknown keyword is still a mistake: {broken:?}"
    );
}

#[test]
fn shell_actions_take_their_runner_s_parameters_and_positions_in_order() {
    let (_dir, roots) = with_pack(&[
        (
            "actions/report.yaml",
            "name: report\nrunner_type: local-shell-script\nentry_point: report.sh\nparameters:\n  target: {type: string, position: 1}\n  source: {type: string, position: 0}\n  verbose: {type: boolean}\n  timeout: {type: integer, default: 5, immutable: true}\n",
        ),
        ("actions/report.sh", "true\n"),
    ]);
    let catalog = load_packs(&roots).unwrap();
    let action = catalog.action(&"t.report".parse().unwrap()).unwrap();
    assert_eq!(action.positional_parameters(), ["source", "target"]);
    for name in ["cwd", "env", "kwarg_op", "sudo"] {
        assert!(
            action.parameters.contains_key(name),
            "runner parameter {name}"
        );
    }
    let resolved = sluice_pack::params::resolve(
        action,
        json!({"source": "a", "env": {"X": "1"}, "sudo": false})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    assert!(
        !resolved.contains_key("kwarg_op"),
        "no default a runner parameter did not get"
    );
    assert_eq!(
        action.timeout_for(&resolved),
        Some(5),
        "the action's own default"
    );
    let overridden = sluice_pack::params::resolve(
        action,
        json!({"source": "a", "timeout": 9})
            .as_object()
            .unwrap()
            .clone(),
    );
    assert!(
        overridden.is_err(),
        "an immutable runner parameter stays as declared"
    );

    let broken = errors(&[
        (
            "actions/twice.yaml",
            "name: twice\nrunner_type: local-shell-script\nentry_point: twice.sh\nparameters:\n  a: {type: string, position: 0}\n  b: {type: string, position: 0}\n",
        ),
        ("actions/twice.sh", "true\n"),
    ]);
    assert!(
        broken
            .iter()
            .any(|e| e.contains("parameters.b.position") && e.contains("a's")),
        "{broken:?}"
    );
}

#[test]
fn retry_policies_from_stackstorm_files_and_action_files_with_backoff() {
    use sluice_core::ExecutionStatus::{Failed, Succeeded, TimedOut};
    let (_dir, roots) = with_pack(&[
        (
            "actions/a.yaml",
            "name: a\nrunner_type: noop\npolicy:\n  retry: {max_retries: 4, delay: 1, backoff: 2, max_delay: 5, jitter: 0.2}\n",
        ),
        ("actions/b.yaml", "name: b\nrunner_type: noop\n"),
        (
            "policies/b1.yaml",
            "name: b1\nresource_ref: t.b\npolicy_type: action.retry\nparameters: {retry_on: timeout, max_retry_count: 2, delay: 3}\n",
        ),
        (
            "policies/b2.yaml",
            "name: b2\nresource_ref: t.b\npolicy_type: action.retry\nparameters: {retry_on: failure, max_retry_count: 1}\n",
        ),
    ]);
    let catalog = load_packs(&roots).unwrap();
    let a = catalog.action(&"t.a".parse().unwrap()).unwrap();
    let retry = a.policy.retry.as_ref().unwrap();
    assert!(retry.retries(Failed, 4) && !retry.retries(Failed, 5));
    assert!(
        !retry.retries(TimedOut, 1),
        "failure is the default, and only it"
    );
    assert!(!retry.retries(Succeeded, 1));
    let seconds = |attempt, spread| retry.delay_after(attempt, spread).as_secs_f64();
    assert_eq!(seconds(1, 0.5), 1.0);
    assert_eq!(seconds(2, 0.5), 2.0);
    assert_eq!(seconds(3, 0.5), 4.0);
    assert_eq!(seconds(4, 0.5), 5.0, "at most max_delay");
    assert!((seconds(2, 0.0) - 1.6).abs() < 1e-9 && (seconds(2, 0.999_999) - 2.4).abs() < 1e-5);
    let b = catalog.action(&"t.b".parse().unwrap()).unwrap();
    let retry = b.policy.retry.as_ref().unwrap();
    assert!(retry.retries(TimedOut, 2) && retry.retries(Failed, 2));

    let broken = errors(&[
        (
            "actions/c.yaml",
            "name: c\nrunner_type: noop\npolicy:\n  retry: {max_retries: 1, jitter: 2, backoff: 0.5}\n",
        ),
        (
            "policies/c.yaml",
            "name: c\nresource_ref: t.c\npolicy_type: action.retry\nparameters: {retry_on: failure}\n",
        ),
        (
            "policies/d.yaml",
            "name: d\nresource_ref: t.c\npolicy_type: action.retry\nparameters: {retry_on: always, max_retry_count: 1}\n",
        ),
    ]);
    for expected in ["policy.retry", "parameters.max_retry_count", "always"] {
        assert!(
            broken.iter().any(|e| e.contains(expected)),
            "{expected}: {broken:?}"
        );
    }
}

#[test]
fn sensors_declare_their_triggers_and_broken_ones_name_file_and_field() {
    let (_dir, roots) = with_pack(&[
        ("sensors/watch.py", "class Watch: pass\n"),
        (
            "sensors/watch.yaml",
            "class_name: Watch\nentry_point: watch.py\npoll_interval: 30\ntrigger_types:\n  - name: changed\n    payload_schema: {type: object, properties: {path: {type: string}}}\n",
        ),
        (
            "rules/on_change.yaml",
            "name: on_change\ntrigger: {type: t.changed}\naction: {ref: core.noop}\n",
        ),
    ]);
    let catalog = load_packs(&roots).unwrap();
    let sensor = &catalog.sensors["t.Watch"];
    assert_eq!(sensor.triggers, ["t.changed"]);
    assert_eq!(sensor.poll_interval, Some(30.0));
    assert!(sensor.entry_point.is_absolute());
    assert!(
        catalog.triggers.contains_key("t.changed"),
        "a rule may use it"
    );

    let broken = errors(&[
        (
            "sensors/a.yaml",
            "class_name: A\nentry_point: ../../outside.py\n",
        ),
        ("sensors/b.py", ""),
        (
            "sensors/b.yaml",
            "class_name: B\nentry_point: b.py\npoll_interval: 0\n",
        ),
        (
            "sensors/c.yaml",
            "class_name: C\nentry_point: c.py\nbogus: 1\n",
        ),
    ]);
    for expected in [
        "sensors/a.yaml: entry_point",
        "sensors/b.yaml: poll_interval",
        "bogus",
    ] {
        assert!(
            broken.iter().any(|e| e.contains(expected)),
            "{expected}: {broken:?}"
        );
    }
}
