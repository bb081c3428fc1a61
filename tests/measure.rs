//! What a run records of its steps' costs, checked on real children that burn
//! a known CPU time, hold a known memory and write known bytes, through
//! `mustbuild stats`.

mod common;

use common::{mustbuild, output};

const PIPELINE: &str = r#"pipeline "costs"
step burn {
  in script=(file)"burn.py"
  out o="burn.txt"
  run "python3 {in.script} > {out.o}"
}
step hold {
  in script=(file)"hold.py"
  out o="hold.txt"
  run "python3 {in.script} > {out.o}"
}
step write {
  out o="zeros.bin"
  run "head -c 5000000 /dev/zero > {out.o}"
}
"#;

/// One second of CPU time, however long it takes to get it.
const BURN: &str = "import time
start = time.process_time()
n = 0
while time.process_time() - start < 1.0:
    n += 1
print(n > 0)
";

/// 300 MiB, touched, held for 1.5 s.
const HOLD: &str = "import time
block = b'x' * (300 << 20)
time.sleep(1.5)
print(len(block))
";

struct Workspace {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: std::path::PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pipeline.kdl"), PIPELINE).unwrap();
        std::fs::write(dir.join("burn.py"), BURN).unwrap();
        std::fs::write(dir.join("hold.py"), HOLD).unwrap();
        Workspace {
            store: tmp.path().join("store"),
            dir,
            _tmp: tmp,
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = mustbuild(&self.dir);
        cmd.args(args).env("MUSTBUILD_STORE", &self.store);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = output(&mut self.command(args));
        assert_eq!(r.code, 0, "{}{}", r.stderr, r.stdout);
        r.stdout
    }

    fn stats(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["stats", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

fn step<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {stats}"))
}

fn within(value: f64, expected: f64, fraction: f64) -> bool {
    (value - expected).abs() <= expected * fraction
}

const METHODS: [&str; 5] = [
    "measured (rapl)",
    "measured (nvml)",
    "measured (rapl+nvml)",
    "modelled",
    "modelled+measured (nvml)",
];

#[test]
fn cpu_memory_io_and_energy_are_recorded_and_the_cache_counts_what_it_avoided() {
    let w = Workspace::new();
    let out = w.ok(&["run", "pipeline.kdl", "-j", "2", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let s = w.stats(&[]);
    let burn = step(&s, "burn");
    let cpu = burn["cpu_mean_s"].as_f64().unwrap();
    assert!(within(cpu, 1.0, 0.35), "burn used {cpu} s of CPU");
    let hold = step(&s, "hold");
    let peak = hold["peak_memory_max_bytes"].as_f64().unwrap();
    // Said how: the step's own cgroup where mustbuild may make one, else wait4.
    let memory = hold["memory_methods"].as_object().unwrap();
    assert_eq!(memory.len(), 1, "{hold}");
    let method = memory.keys().next().unwrap();
    assert!(
        method.starts_with("cgroup (") || method.starts_with("wait4 ("),
        "{hold}"
    );
    let expected = (300u64 << 20) as f64;
    assert!(within(peak, expected, 0.25), "hold peaked at {peak} bytes");
    assert!(hold["wall_mean_s"].as_f64().unwrap() >= 1.5);
    let write = step(&s, "write");
    let written = write["written_bytes"].as_u64().unwrap();
    assert!(written >= 5_000_000, "write wrote {written} bytes");
    assert!(
        write["read_bytes"].as_u64().unwrap() >= 5_000_000,
        "head read /dev/zero"
    );
    // Every step has an energy, with its method, on any machine.
    let mut energy = 0.0;
    for name in ["burn", "hold", "write"] {
        let st = step(&s, name);
        let joules = st["energy_joules"].as_f64().unwrap();
        assert!(joules > 0.0, "{st}");
        energy += joules;
        let methods = st["energy_methods"].as_object().unwrap();
        assert_eq!(methods.len(), 1, "{st}");
        assert!(
            METHODS.contains(&methods.keys().next().unwrap().as_str()),
            "{st}"
        );
    }
    let totals = &s["totals"];
    assert!((totals["energy_joules"].as_f64().unwrap() - energy).abs() < 1e-6);
    // The run's summary says the same, and each executed event its own.
    assert!(
        (summary["energy_joules"].as_f64().unwrap() - energy).abs() < 1e-6,
        "{summary}"
    );
    let events: f64 = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "executed")
        .map(|e| e["energy_joules"].as_f64().unwrap())
        .sum();
    if step(&s, "burn")["energy_methods"].get("modelled").is_some() {
        assert!((events - energy).abs() < 1e-6, "{events} vs {energy}");
    }
    assert!(totals["co2e_grams"].as_f64().unwrap() > 0.0);
    assert_eq!(totals["executions"], 3);
    assert_eq!(totals["hit_ratio"], 0.0);

    // A no-op rerun reuses all three: it avoided what they cost the first time.
    w.ok(&["run", "pipeline.kdl"]);
    let again = w.stats(&[]);
    let t = &again["totals"];
    assert_eq!(
        (t["executions"].as_u64(), t["reused"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(t["hit_ratio"], 1.0);
    let avoided = t["avoided_energy_joules"].as_f64().unwrap();
    assert!((avoided - energy).abs() < 1e-6, "{avoided} vs {energy}");
    assert!(t["avoided_wall_s"].as_f64().unwrap() >= 2.5);
    assert_eq!(step(&again, "hold")["reused"], 1);

    // Per run, newest first, as CSV too.
    let by_run = w.stats(&["--by", "run"]);
    let ids: Vec<i64> = by_run
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [2, 1]);
    let csv = w.ok(&["stats", "--by", "run", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("run,pipeline,executions"));
    let text = w.ok(&["stats", "--run", "1"]);
    assert!(text.contains("run 1 of "), "{text}");
    for name in ["burn", "hold", "write"] {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn the_model_and_the_footprint_take_their_figures_from_configuration_and_the_environment() {
    let w = Workspace::new();
    std::fs::write(
        w.dir.join("pipeline.kdl"),
        "pipeline \"one\"\nstep burn {\n  in script=(file)\"burn.py\"\n  out o=\"burn.txt\"\n  run \"python3 {in.script} > {out.o}\"\n}\n",
    )
    .unwrap();
    // mustbuild.kdl beside the pipeline: a host block that matches every host.
    std::fs::write(
        w.dir.join("mustbuild.kdl"),
        "energy {\n  core-watts 50\n  carbon-intensity 100\n  host \"*\" {\n    core-watts 100\n  }\n}\n",
    )
    .unwrap();
    let r = output(&mut w.command(&["run", "pipeline.kdl"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = w.stats(&[]);
    let burn = step(&s, "burn");
    if burn["energy_methods"].get("modelled").is_some() {
        // 1 s of CPU at 100 W per core, give or take the memory's share.
        let j = burn["energy_joules"].as_f64().unwrap();
        let cpu = burn["cpu_mean_s"].as_f64().unwrap();
        assert!(
            j >= cpu * 100.0 && j < cpu * 100.0 + 1.0,
            "{j} J for {cpu} s"
        );
    }
    assert_eq!(s["footprint"]["carbon_intensity"], 100.0);
    let plain = s["totals"]["co2e_grams"].as_f64().unwrap();
    let r = output(
        w.command(&["stats", "--json"])
            .env("MUSTBUILD_CARBON_INTENSITY", "200"),
    );
    let doubled: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let doubled = doubled["totals"]["co2e_grams"].as_f64().unwrap();
    assert!(
        (doubled - 2.0 * plain).abs() < 1e-9 * plain.max(1.0),
        "{doubled} vs {plain}"
    );
    // A mistake in the file: where, and what would be right.
    std::fs::write(w.dir.join("mustbuild.kdl"), "energy {\n  watts 5\n}\n").unwrap();
    let r = output(&mut w.command(&["run", "pipeline.kdl"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("mustbuild.kdl:2:3: unknown energy setting `watts`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hint: known: core-watts"), "{}", r.stderr);
    std::fs::remove_file(w.dir.join("mustbuild.kdl")).unwrap();
    let r = output(w.command(&["stats"]).env("MUSTBUILD_PUE", "much"));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("MUSTBUILD_PUE=much is not a positive number"),
        "{}",
        r.stderr
    );
}

#[test]
fn advice_asks_for_the_p95_with_a_margin_and_names_declarations_far_from_use() {
    let w = Workspace::new();
    let pipeline = PIPELINE
        .replace(
            "run \"head -c",
            "resources memory=\"8GiB\"\n  run \"head -c",
        )
        .replace(
            "run \"python3 {in.script} > {out.o}\"\n}\nstep write",
            "resources memory=\"100MiB\"\n  run \"python3 {in.script} > {out.o}\"\n}\nstep write",
        );
    std::fs::write(w.dir.join("pipeline.kdl"), &pipeline).unwrap();
    w.ok(&["run", "pipeline.kdl", "-j", "2"]);
    let a: serde_json::Value =
        serde_json::from_str(&w.ok(&["stats", "--advice", "--json"])).unwrap();
    let of = |name: &str| {
        a.as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no advice for {name}: {a}"))
            .clone()
    };
    let hold = of("hold");
    assert_eq!(hold["samples"], 1);
    let peak = hold["memory_p95_bytes"].as_u64().unwrap();
    let ask = hold["request_memory_bytes"].as_u64().unwrap();
    assert!(
        ask as f64 >= peak as f64 * 1.2 && ask % (64 << 20) == 0,
        "{hold}"
    );
    assert_eq!(hold["declared_memory_bytes"], 100u64 << 20);
    let warning = hold["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("declares memory 100 MiB but used up to"),
        "{warning}"
    );
    let write = of("write");
    let warning = write["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("declares memory 8192 MiB but uses"),
        "{warning}"
    );
    assert_eq!(of("burn")["warnings"], serde_json::json!([]));
    let text = w.ok(&["stats", "--advice"]);
    assert!(
        text.contains("warning: hold declares memory 100 MiB"),
        "{text}"
    );
}

#[test]
fn memory_advice_follows_the_size_of_each_instances_inputs() {
    let w = Workspace::new();
    std::fs::write(
        w.dir.join("pipeline.kdl"),
        r#"pipeline "sizes"
input parts glob="parts/*.bin"
step load {
  foreach part from=parts
  in script=(file)"load.py" data=part
  out o="out/{part.stem}.txt"
  run "python3 {in.script} {in.data} > {out.o}"
}
"#,
    )
    .unwrap();
    // Holds its input whole: a peak of the interpreter's own plus the input.
    std::fs::write(
        w.dir.join("load.py"),
        "import sys, time\ndata = open(sys.argv[1], 'rb').read()\ntime.sleep(0.3)\nprint(len(data))\n",
    )
    .unwrap();
    std::fs::create_dir_all(w.dir.join("parts")).unwrap();
    // Big enough that wait4's figure is exact (above mustbuild's own peak):
    // a run's first second has no step cgroups.
    for mib in [48usize, 96, 144, 192] {
        let bytes = vec![7u8; mib << 20];
        std::fs::write(w.dir.join(format!("parts/p{mib}.bin")), bytes).unwrap();
    }
    w.ok(&["run", "pipeline.kdl", "-j", "1"]);
    let a: serde_json::Value =
        serde_json::from_str(&w.ok(&["stats", "--advice", "--json"])).unwrap();
    let load = &a[0];
    assert_eq!(load["step"], "load", "{a}");
    let line = &load["memory_line"];
    assert_eq!(line["samples"], 4, "{load}");
    let per_byte = line["per_input_byte"].as_f64().unwrap();
    assert!((0.75..1.5).contains(&per_byte), "{load}");
    assert!(line["r2"].as_f64().unwrap() >= 0.8, "{load}");
    let text = w.ok(&["stats", "--advice"]);
    assert!(text.contains("memory follows input size"), "{text}");
}
