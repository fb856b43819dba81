//! The checks, in the order they run. Each says in its name what the contract asks
//! (see `wit/engine.wit`), and in a failure what it saw instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;

use super::archive::{AGENT_LINES, AGENT_PATH, TestImage};
use super::{Group, Options, Outcome, Report, Subject, Verdict};
use crate::engine::{AgentInfo, AgentSpec, EngineError, labels};
use crate::options::{AgentOptions, feature};

type Check = Result<String, String>;

/// The plugin name on the kit's agents: no plugin of an operator is called that.
const PLUGIN: &str = "context-engines-conformance";
/// How long an agent may take to show a state the check waits for.
const SETTLE: Duration = Duration::from_secs(20);

pub struct Kit {
    subject: Subject,
    options: Options,
    run: String,
    report: Report,
    images: Vec<String>,
    agents: Vec<String>,
}

impl Kit {
    pub fn new(subject: Subject, options: Options) -> Kit {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let run = format!("{:x}{:05x}", std::process::id(), nanos >> 12);
        Kit { subject, options, run, report: Report::default(), images: Vec::new(), agents: Vec::new() }
    }

    pub fn push(&mut self, outcome: Outcome) {
        self.report.outcomes.push(outcome);
    }

    pub fn into_report(self) -> Report {
        self.report
    }

    pub async fn run(&mut self, emit: &mut (dyn FnMut(&Outcome) + Send)) {
        for group in Group::ALL {
            if !self.options.groups.contains(&group) {
                continue;
            }
            match group {
                Group::Describe => self.describe(emit).await,
                Group::Images => self.images(emit).await,
                Group::Agents => self.agents(emit).await,
                Group::Limits => self.limits(emit).await,
            }
        }
    }

    fn record(&mut self, emit: &mut (dyn FnMut(&Outcome) + Send), check: &str, verdict: Verdict) {
        let outcome = Outcome { check: check.to_string(), verdict };
        emit(&outcome);
        self.report.outcomes.push(outcome);
    }

    fn declares(&self, feature: &str) -> bool {
        self.subject.features.iter().any(|f| f == feature)
    }

    fn image(&self, name: &str) -> String {
        format!("conformance/{name}:{}", self.run)
    }

    /// An image of this run's own: the run is in its content too, so no other run (in
    /// parallel, on the same runtime) loads the same image under another name, which
    /// would turn a removal of our last name into an untag.
    fn test_image(&self, name: &str) -> TestImage {
        TestImage::new(&self.image(name), &format!("{name}-{}", self.run))
    }

    // ---- describe -------------------------------------------------------------------

    async fn describe(&mut self, emit: &mut (dyn FnMut(&Outcome) + Send)) {
        let engine = std::sync::Arc::clone(&self.subject.engine);
        let features = self.subject.features.join(", ");
        let result = async {
            let info = engine.info().await.map_err(|e| e.to_string())?;
            if info.version.trim().is_empty() {
                return Err("the version is empty".to_string());
            }
            // A WASM engine's version line already lists its features.
            let features = if info.kind == "wasm" { String::new() } else { format!(", features [{features}]") };
            Ok(format!("{} {} ({}){features}", info.name, info.version, info.kind))
        }
        .await;
        self.record(emit, "describe names the engine", verdict(result));
        let probe = format!("drp-conformance-{}-nobody", self.run);
        let result = async {
            let listed = engine.agent_list(&[(labels::MACHINE, probe.as_str())]).await.map_err(|e| e.to_string())?;
            if listed.is_empty() { Ok(String::new()) } else { Err(format!("listing a label nobody carries found {}", names(&listed))) }
        }
        .await;
        self.record(emit, "configure accepts the settings and the runtime answers", verdict(result));
    }

    // ---- images ---------------------------------------------------------------------

    async fn images(&mut self, emit: &mut (dyn FnMut(&Outcome) + Send)) {
        let engine = std::sync::Arc::clone(&self.subject.engine);
        let absent = self.image("absent");
        let result = async {
            match engine.image_id(&absent).await.map_err(|e| e.to_string())? {
                None => Ok(String::new()),
                Some(id) => Err(format!("{absent} has the id {id}")),
            }
        }
        .await;
        self.record(emit, "image-id of an absent image is none", verdict(result));

        let small = self.test_image("agent");
        self.images.push(small.reference.clone());
        let result = self.load_and_find(&small, false).await;
        self.record(emit, "image-load of an archive makes its name an image", verdict(result));

        let gzipped = self.test_image("gzipped");
        self.images.push(gzipped.reference.clone());
        let result = self.load_and_find(&gzipped, true).await;
        self.record(emit, "image-load of a gzip archive (the host decompresses it)", verdict(result));

        let source = small.reference.clone();
        let target = self.image("tagged");
        self.images.push(target.clone());
        let result = async {
            engine.image_tag(&source, &target).await.map_err(|e| e.to_string())?;
            let (a, b) = (engine.image_id(&source).await, engine.image_id(&target).await);
            match (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?) {
                (Some(a), Some(b)) if a == b => Ok(String::new()),
                (a, b) => Err(format!("ids after the tag: {source} {a:?}, {target} {b:?}")),
            }
        }
        .await;
        self.record(emit, "image-tag gives the image a second name", verdict(result));
        let result = async {
            if !engine.image_remove(&target).await.map_err(|e| e.to_string())? {
                return Err(format!("removing {target} answered false (nothing removed)"));
            }
            if let Some(id) = engine.image_id(&target).await.map_err(|e| e.to_string())? {
                return Err(format!("{target} still names {id} after its removal"));
            }
            match engine.image_id(&source).await.map_err(|e| e.to_string())? {
                Some(_) => Ok(String::new()),
                None => Err(format!("removing {target} also removed {source}")),
            }
        }
        .await;
        self.record(emit, "image-remove of one name keeps the image's other names", verdict(result));
        let result = async {
            match engine.image_remove(&target).await.map_err(|e| e.to_string())? {
                false => Ok(String::new()),
                true => Err(format!("removing {target} a second time answered true")),
            }
        }
        .await;
        self.record(emit, "image-remove of an absent image is false", verdict(result));

        let corrupt = self.image("corrupt");
        self.images.push(corrupt.clone());
        let survivor = source.clone();
        let result = async {
            let garbage: Vec<u8> = b"this is not an image archive\n".repeat(2000);
            let archive = Box::pin(stream::iter([Ok(Bytes::from(garbage))]));
            match engine.image_load(&corrupt, archive).await {
                Err(EngineError::BadArchive { .. }) => {}
                Err(other) => return Err(format!("expected bad-archive, got: {other}")),
                Ok(()) => return Err("the engine accepted it".to_string()),
            }
            engine.image_id(&survivor).await.map_err(|e| format!("the next call failed: {e}"))?;
            Ok(String::new())
        }
        .await;
        self.record(emit, "image-load of a corrupt archive is bad-archive, and the engine answers after", verdict(result));

        if self.options.large_mb == 0 {
            self.record(emit, "image-load of a large archive", Verdict::Skip("left out (--large-mb 0)".to_string()));
        } else {
            let large = TestImage::large(&self.image("large"), &format!("large-{}", self.run), self.options.large_mb * 1024 * 1024);
            self.images.push(large.reference.clone());
            let name = format!("image-load of a {} MiB archive, streamed", large.size() / (1024 * 1024));
            let started = Instant::now();
            let engine = std::sync::Arc::clone(&engine);
            let result = async {
                self.load_and_find(&large, false).await?;
                let secs = started.elapsed().as_secs_f64();
                let removed = engine.image_remove(&large.reference).await.map_err(|e| format!("removing it after: {e}"))?;
                if !removed {
                    return Err("removing it after answered false".to_string());
                }
                Ok(format!("{secs:.1} s, {:.0} MiB/s", large.size() as f64 / (1024.0 * 1024.0) / secs.max(0.001)))
            }
            .await;
            self.record(emit, &name, verdict(result));
        }
    }

    /// Loads `image` (gzipped first when asked, then through the host's decompression)
    /// and checks its name answers.
    async fn load_and_find(&self, image: &TestImage, gzip: bool) -> Check {
        let engine = &self.subject.engine;
        let archive = if gzip {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut encoder, &image.bytes()).map_err(|e| e.to_string())?;
            let gz = encoder.finish().map_err(|e| e.to_string())?;
            crate::images::gunzip(Box::pin(stream::iter([Ok(Bytes::from(gz))]))).await.map_err(|e| e.to_string())?
        } else {
            image.archive()
        };
        engine.image_load(&image.reference, archive).await.map_err(|e| e.to_string())?;
        match engine.image_id(&image.reference).await.map_err(|e| e.to_string())? {
            Some(_) => Ok(String::new()),
            None => Err(format!("the load succeeded but image-id of {} is none", image.reference)),
        }
    }

    // ---- agents ---------------------------------------------------------------------

    fn spec(&self, machine: &str, image: &str, digest: &str) -> AgentSpec {
        let name = format!("drp-conformance-{}-{machine}", self.run);
        let env = [("RS_UUID".to_string(), format!("{}-{machine}", self.run)), ("CONFORMANCE".to_string(), "1".to_string())];
        let labels = [
            (labels::MACHINE.to_string(), format!("{}-{machine}", self.run)),
            (labels::CONTEXT.to_string(), "conformance".to_string()),
            (labels::PLUGIN.to_string(), PLUGIN.to_string()),
            (labels::ENGINE.to_string(), self.subject.engine.name().to_string()),
            (labels::IMAGE.to_string(), image.to_string()),
            (labels::SPEC.to_string(), digest.to_string()),
        ];
        let options = AgentOptions { env: BTreeMap::from(env), labels: BTreeMap::from(labels), ..AgentOptions::default() };
        AgentSpec {
            name,
            image: image.to_string(),
            entrypoint: Some(vec![AGENT_PATH.to_string()]),
            network: self.options.network.clone(),
            options,
        }
    }

    async fn start(&mut self, spec: &AgentSpec) -> Result<AgentInfo, String> {
        if !self.agents.contains(&spec.name) {
            self.agents.push(spec.name.clone());
        }
        self.subject.engine.agent_start(spec).await.map_err(|e| e.to_string())
    }

    /// The agents carrying `spec`'s machine label.
    async fn of_machine(&self, spec: &AgentSpec) -> Result<Vec<AgentInfo>, String> {
        let machine = spec.labels().get(labels::MACHINE).cloned().unwrap_or_default();
        self.subject.engine.agent_list(&[(labels::MACHINE, machine.as_str())]).await.map_err(|e| e.to_string())
    }

    /// Exactly one agent of `spec`'s machine, with id `id`, running.
    async fn only(&self, spec: &AgentSpec, id: &str) -> Check {
        let listed = self.of_machine(spec).await?;
        match listed.as_slice() {
            [one] if one.id == id && one.running => started_as(spec, one).map_err(|why| format!("agent-list shows it so: {why}")),
            [one] if one.id == id => Err(format!("{} is listed as not running", one.name)),
            _ => Err(format!("expected only {id} running, agent-list shows {}", names(&listed))),
        }
    }

    async fn agents(&mut self, emit: &mut (dyn FnMut(&Outcome) + Send)) {
        // The images the agents run; loaded here too, so `--only agents` works.
        let (a, b) = (self.test_image("agent"), self.test_image("agent-b"));
        for image in [&a, &b] {
            if !self.images.contains(&image.reference) {
                self.images.push(image.reference.clone());
            }
            if let Err(why) = self.load_and_find(image, false).await {
                self.record(emit, &format!("loading the agents' image {}", image.reference), Verdict::Fail(why));
                return;
            }
        }

        let first = self.spec("m1", &a.reference, "spec-1");
        let started = self.start(&first).await;
        let shown = match &started {
            Ok(info) => verdict(started_as(&first, info)),
            Err(why) => Verdict::Fail(why.clone()),
        };
        self.record(emit, "agent-start runs the agent with the spec's name and labels", shown);
        let Ok(started) = started else { return };

        let again = self.start(&first).await;
        self.record(
            emit,
            "agent-start of the same spec keeps the running agent",
            verdict(again.and_then(|info| {
                if info.id == started.id { Ok(String::new()) } else { Err(format!("replaced: {} → {}", started.id, info.id)) }
            })),
        );

        let listed = self.only(&first, &started.id).await;
        // Every label must match, whichever comes first.
        let machine = first.labels().get(labels::MACHINE).cloned().unwrap_or_default();
        let other = format!("another-plugin-{}", self.run);
        let mut by_labels = listed;
        for pairs in [
            [(labels::PLUGIN, PLUGIN), (labels::MACHINE, "nobody")],
            [(labels::MACHINE, machine.as_str()), (labels::PLUGIN, other.as_str())],
            [(labels::PLUGIN, other.as_str()), (labels::MACHINE, machine.as_str())],
        ] {
            let found = self.subject.engine.agent_list(&pairs).await;
            by_labels = by_labels.and_then(|_| match found {
                Ok(found) if found.is_empty() => Ok(String::new()),
                Ok(found) => Err(format!("{pairs:?} matched {}, which does not carry all of them", names(&found))),
                Err(e) => Err(e.to_string()),
            });
        }
        self.record(emit, "agent-list finds agents by all of the labels given", verdict(by_labels));

        if self.declares(feature::LOGS) {
            let logs = self.logs(&first.name).await;
            self.record(emit, "agent-logs returns the agent's output in order", verdict(logs));
            let absent = format!("drp-conformance-{}-absent", self.run);
            let shown = match self.subject.engine.agent_logs(&absent, 10).await {
                Err(EngineError::Rejected { .. }) => Verdict::Pass(String::new()),
                Err(other) => Verdict::Fail(format!("expected rejected, got: {other}")),
                Ok(lines) => Verdict::Fail(format!("answered {} lines", lines.len())),
            };
            self.record(emit, "agent-logs of an absent agent is rejected", shown);
        } else {
            self.record(emit, "agent-logs", Verdict::Skip("the engine does not declare the feature `logs`".to_string()));
        }

        let second = self.spec("m1", &a.reference, "spec-2");
        let replaced = self.replaced(&second, &started.id).await;
        self.record(
            emit,
            "agent-start with another spec digest replaces the agent",
            verdict(replaced.as_ref().map(|_| String::new()).map_err(Clone::clone)),
        );
        let current = replaced.map(|info| info.id).unwrap_or(started.id.clone());

        let third = self.spec("m1", &b.reference, "spec-3");
        let replaced = self.replaced(&third, &current).await;
        let checked = replaced.as_ref().map_err(Clone::clone).and_then(|info| match info.label(labels::IMAGE) {
            Some(image) if image == b.reference => Ok(String::new()),
            other => Err(format!("its drp.image label is {other:?}, not {}", b.reference)),
        });
        self.record(emit, "agent-start with another image replaces the agent", verdict(checked));
        let current = replaced.map(|info| info.id).unwrap_or(current);

        let in_use = match self.subject.engine.image_remove(&b.reference).await {
            Err(EngineError::Rejected { .. }) => self.only(&third, &current).await.map_err(|why| format!("the agent was touched: {why}")),
            Err(other) => Err(format!("expected rejected, got: {other}")),
            Ok(removed) => match self.only(&third, &current).await {
                Ok(_) => Err(format!("the image's last name was removed under its running agent (answered {removed})")),
                Err(why) => Err(format!("the removal took the running agent with it: {why}")),
            },
        };
        self.record(emit, "image-remove of the image a running agent uses is rejected, and the agent left alone", verdict(in_use));

        let missing = self.spec("m1", &self.image("absent"), "spec-4");
        let result = match self.subject.engine.agent_start(&missing).await {
            Err(EngineError::ImageMissing { .. }) => {
                self.only(&third, &current).await.map_err(|why| format!("the running agent was touched: {why}"))
            }
            Err(other) => Err(format!("expected image-missing, got: {other}")),
            Ok(info) => Err(format!("started {} from an image that does not exist", info.id)),
        };
        self.record(emit, "agent-start from a missing image is image-missing and leaves the running agent", verdict(result));

        let foreign = self.foreign_name().await;
        self.record(emit, "agent-start on a name another plugin holds is rejected, and that agent left alone", verdict(foreign));

        let exited = self.exited_is_replaced(&a.reference).await;
        self.record(emit, "agent-start replaces an agent whose process has exited", verdict(exited));

        let stop = match self.subject.engine.agent_stop(&first.name).await {
            Ok(true) => self
                .of_machine(&first)
                .await
                .and_then(|left| if left.is_empty() { Ok(String::new()) } else { Err(format!("agent-list still shows {}", names(&left))) }),
            Ok(false) => Err("agent-stop answered false for a running agent".to_string()),
            Err(e) => Err(e.to_string()),
        };
        self.record(emit, "agent-stop removes the agent", verdict(stop));
        let again = match self.subject.engine.agent_stop(&first.name).await {
            Ok(false) => Ok(String::new()),
            Ok(true) => Err("a second agent-stop answered true".to_string()),
            Err(e) => Err(e.to_string()),
        };
        self.record(emit, "agent-stop of an absent agent is false", verdict(again));
    }

    /// Starts `spec`, which must replace the agent `old` by one new agent.
    async fn replaced(&mut self, spec: &AgentSpec, old: &str) -> Result<AgentInfo, String> {
        let info = self.start(spec).await?;
        if info.id == old {
            return Err(format!("the agent {old} was kept"));
        }
        self.only(spec, &info.id).await?;
        Ok(info)
    }

    async fn logs(&self, name: &str) -> Check {
        let began = Instant::now();
        loop {
            let lines = self.subject.engine.agent_logs(name, 100).await.map_err(|e| e.to_string())?;
            let at = |wanted: &str| lines.iter().position(|line| line.ends_with(wanted));
            match (at(AGENT_LINES[0]), at(AGENT_LINES[1]), at(AGENT_LINES[2])) {
                (Some(one), Some(two), Some(_)) if one < two => return Ok(String::new()),
                (Some(one), Some(two), Some(_)) => return Err(format!("line 2 came before line 1: {:?}", &lines[two..=one])),
                _ if began.elapsed() > SETTLE => return Err(format!("after {} s the agent's output is {lines:?}", SETTLE.as_secs())),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn foreign_name(&mut self) -> Check {
        let mut theirs = self.spec("m2", &self.image("agent"), "spec-1");
        theirs.options.labels.insert(labels::PLUGIN.to_string(), format!("another-plugin-{}", self.run));
        let held = self.start(&theirs).await?;
        let mut ours = theirs.clone();
        ours.options.labels.insert(labels::PLUGIN.to_string(), PLUGIN.to_string());
        match self.subject.engine.agent_start(&ours).await {
            Err(EngineError::Rejected { .. }) => {}
            Err(other) => return Err(format!("expected rejected, got: {other}")),
            Ok(info) => return Err(format!("started {} over another plugin's agent", info.id)),
        }
        self.only(&theirs, &held.id).await.map_err(|why| format!("the other plugin's agent was touched: {why}"))
    }

    /// A runtime with a restart policy restarts an exited agent itself, after a delay
    /// that grows with each exit; a start that lands after a restart rightly keeps the
    /// agent. So: wait until the agent is seen exited, start, and try again while the
    /// runtime keeps winning that race.
    async fn exited_is_replaced(&mut self, image: &str) -> Check {
        let mut spec = self.spec("m3", image, "spec-1");
        // Any argument makes the agent exit at once (see agent.s).
        spec.entrypoint = Some(vec![AGENT_PATH.to_string(), "exit".to_string()]);
        let mut current = self.start(&spec).await?;
        let began = Instant::now();
        let mut tries = 0;
        loop {
            let listed = self.of_machine(&spec).await?;
            if listed.iter().any(|a| a.id == current.id && !a.running) {
                tries += 1;
                let next = self.start(&spec).await?;
                if next.id != current.id {
                    let listed = self.of_machine(&spec).await?;
                    if listed.len() != 1 {
                        return Err(format!("agent-list shows {} after the replacement", names(&listed)));
                    }
                    return Ok(format!("replaced at try {tries}"));
                }
                if !next.running {
                    return Err(format!("agent-start kept the exited agent {}", current.id));
                }
                current = next;
            }
            if began.elapsed() > SETTLE {
                return Err(format!(
                    "in {} s the exited agent was never replaced ({tries} starts while it was seen exited kept it)",
                    SETTLE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- limits ---------------------------------------------------------------------

    async fn limits(&mut self, emit: &mut (dyn FnMut(&Outcome) + Send)) {
        let Some(wasm) = self.subject.wasm.clone() else {
            self.record(emit, "limits", Verdict::Skip("a native engine has no WASM limits".to_string()));
            return;
        };
        let limits = wasm.current_limits();
        let needed = wasm.memory_needed().await.map_err(|e| e.to_string());
        let shown = needed.clone().map(|bytes| {
            format!("needs {} of linear memory after instantiation and configure, of a cap of {}", human(bytes), human(limits.memory_bytes))
        });
        self.record(emit, "an instance fits in the memory cap", verdict(shown));
        let Ok(needed) = needed else { return };

        // Half of what an instance needs: its creation must fail, and say why.
        let tight = crate::wasm::Limits { memory_bytes: needed / 2, ..limits };
        let result = wasm
            .with_limits(tight, async {
                match self.subject.engine.agent_list(&[(labels::PLUGIN, PLUGIN)]).await {
                    Err(e) if e.to_string().contains("memory cap") => Ok(e.to_string()),
                    Err(e) => Err(format!("the error does not name the memory cap: {e}")),
                    Ok(_) => Err(format!("a call under a cap of {} succeeded", human(needed / 2))),
                }
            })
            .await;
        let result = self.recovered(result).await;
        self.record(emit, "a call over the memory cap fails naming it, and the engine recovers", verdict(result));
    }

    /// `result`, then a call under the engine's own limits that must succeed.
    async fn recovered(&self, result: Check) -> Check {
        let shown = result?;
        self.subject.engine.agent_list(&[(labels::PLUGIN, PLUGIN)]).await.map_err(|e| format!("the next call failed: {e}"))?;
        Ok(shown)
    }

    /// Stops every agent and removes every image the kit made; what it could not is
    /// returned.
    pub async fn clean_up(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for name in std::mem::take(&mut self.agents) {
            if let Err(e) = self.subject.engine.agent_stop(&name).await {
                problems.push(format!("stopping {name}: {e}"));
            }
        }
        for image in std::mem::take(&mut self.images) {
            if let Err(e) = self.subject.engine.image_remove(&image).await {
                problems.push(format!("removing {image}: {e}"));
            }
        }
        problems
    }
}

/// The agent `info` answers for `spec`: same name, running, every label of the spec.
fn started_as(spec: &AgentSpec, info: &AgentInfo) -> Check {
    if info.name != spec.name {
        return Err(format!("it answered the name {}, not {}", info.name, spec.name));
    }
    if !info.running {
        return Err(format!("{} is not running", info.name));
    }
    if info.id.is_empty() {
        return Err("its id is empty".to_string());
    }
    let wrong: Vec<String> = spec
        .labels()
        .iter()
        .filter(|(k, v)| info.label(k) != Some(v.as_str()))
        .map(|(k, v)| format!("{k}={v} (got {:?})", info.label(k)))
        .collect();
    if wrong.is_empty() { Ok(String::new()) } else { Err(format!("labels missing or changed: {}", wrong.join(", "))) }
}

fn human(bytes: usize) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib < 1.0 {
        format!("{} KiB", bytes.div_ceil(1024))
    } else if mib.fract() == 0.0 {
        format!("{mib} MiB")
    } else {
        format!("{mib:.1} MiB")
    }
}

fn verdict(check: Check) -> Verdict {
    match check {
        Ok(detail) => Verdict::Pass(detail),
        Err(why) => Verdict::Fail(why),
    }
}

fn names(agents: &[AgentInfo]) -> String {
    if agents.is_empty() {
        return "none".to_string();
    }
    agents.iter().map(|a| format!("{} ({}{})", a.name, a.id, if a.running { ", running" } else { "" })).collect::<Vec<_>>().join(", ")
}
