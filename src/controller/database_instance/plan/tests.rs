use super::*;
use crate::crd::UpgradePolicy;
use crate::engine::{Endpoint, Position, Probe, Role};

const SRC: &str = "6.2.14";
const DST: &str = "7.0.15";

fn host(i: usize) -> String {
    format!("127.1.0.{}", i + 2)
}

fn pos(off: u64) -> Position {
    Position::parse_redis(&format!("aaa:{off}")).unwrap()
}

/// db-0 primary at offset 100, db-1 and db-2 streaming from it, all on `SRC`.
fn members() -> Vec<Member> {
    (0..3)
        .map(|i| Member {
            name: format!("db-{i}"),
            exists: true,
            version: Some(SRC.into()),
            ready: true,
            endpoint: Some(Endpoint::new(host(i), 6379)),
            probe: Some(Probe {
                role: if i == 0 { Role::Primary } else { Role::Standby },
                version: SRC.into(),
                position: pos(100),
                received: None,
                following: (i != 0).then(|| host(0)),
                streaming: i != 0,
                fenced: i != 0,
                stale_certificate: false,
            }),
            image_current: true,
            ..Default::default()
        })
        .collect()
}

fn upgrade_member(m: &mut Member) {
    m.version = Some(DST.into());
    m.probe.as_mut().unwrap().version = DST.into();
}

/// Makes `leader` the primary every other member streams from.
fn lead(m: &mut [Member], leader: usize) {
    for (i, x) in m.iter_mut().enumerate() {
        let p = x.probe.as_mut().unwrap();
        p.role = if i == leader {
            Role::Primary
        } else {
            Role::Standby
        };
        p.following = (i != leader).then(|| host(leader));
        p.streaming = i != leader;
        p.fenced = i != leader;
    }
}

struct Fixture {
    policy: UpgradePolicy,
    goal: Option<Position>,
    published: String,
    replicated: bool,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            policy: UpgradePolicy::default(),
            goal: None,
            published: "db-0".into(),
            replicated: false,
        }
    }

    fn view<'a>(&'a self, m: &'a [Member], primary: &'a str) -> View<'a> {
        View {
            members: m,
            primary,
            policy: &self.policy,
            step_elapsed: Duration::ZERO,
            fence_elapsed: Duration::ZERO,
            may_start_step: true,
            fence_goal: self.goal.as_ref(),
            published: Some(&self.published),
            quarantined: &[],
            offline_check: None,
            offline_leftovers: None,
            replicated: self.replicated,
            now: jiff::Timestamp::UNIX_EPOCH,
        }
    }
}

/// A switchover away from db-0 at `stage`, with `candidate` and the recorded fence position.
fn switching(stage: SwitchoverStage, candidate: &str, fence: Option<&str>) -> SwitchoverState {
    SwitchoverState {
        stage,
        from: "db-0".into(),
        candidate: Some(candidate.into()),
        fence_position: fence.map(String::from),
        fenced_at: None,
        undoing: None,
        writable_at: None,
    }
}

fn upgrade(step: UpgradeStep) -> UpgradeInFlight {
    UpgradeInFlight {
        step,
        ..UpgradeInFlight::new(SRC, DST, "db-0", Time(jiff::Timestamp::UNIX_EPOCH))
    }
}

fn standby(m: &str) -> UpgradeStep {
    UpgradeStep::on(StepKind::UpgradeStandby, m)
}

fn recorded(p: &Plan) -> UpgradeStep {
    p.upgrade.clone().expect("a record").step
}

fn sw(p: &Plan) -> SwitchoverState {
    p.upgrade
        .clone()
        .and_then(|u| u.switchover)
        .expect("a switchover")
}

#[test]
fn standbys_go_first_in_ordinal_order_then_the_switchover() {
    let f = Fixture::new();
    let mut m = members();
    let p = next(&f.view(&m, "db-0"), &upgrade(UpgradeStep::default()), false);
    assert_eq!(recorded(&p), standby("db-1"));
    assert_eq!(p.act, Act::None);
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert!(
        matches!(&p.act, Act::SetVersion { member, version, .. } if member == "db-1" && version == DST),
        "{p:?}"
    );
    upgrade_member(&mut m[1]);
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert_eq!(recorded(&p), standby("db-2"));
    upgrade_member(&mut m[2]);
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-2")), false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::Switchover));
}

#[test]
fn a_member_counts_only_when_the_new_server_runs_and_caught_up() {
    let f = Fixture::new();
    let mut m = members();
    m[1].version = Some(DST.into()); // pod changed, old server still answering
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert_eq!(p.act, Act::None);
    assert_eq!(recorded(&p), standby("db-1"), "still waiting");
    upgrade_member(&mut m[1]);
    m[1].probe.as_mut().unwrap().position = pos(90);
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert!(p.waiting.is_some(), "10 bytes behind: {p:?}");
    m[1].image_current = false;
    m[1].probe.as_mut().unwrap().position = pos(100);
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert!(
        p.waiting.is_some(),
        "the node has not run the new image yet"
    );
}

#[test]
fn a_standby_back_ready_but_behind_is_looked_at_at_the_catch_up_pace_for_a_while() {
    let f = Fixture::new();
    let mut m = members();
    upgrade_member(&mut m[1]);
    m[1].probe.as_mut().unwrap().position = pos(90);
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert!(
        p.waiting.is_some() && p.catching_up,
        "Ready, 10 bytes behind: {p:?}"
    );
    // Not Ready yet: its pod's readiness is an event, no need to look sooner.
    m[1].ready = false;
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert!(p.waiting.is_some() && !p.catching_up, "{p:?}");
    // Still behind well into the step: catching up on something large, the usual poll.
    m[1].ready = true;
    let late = View {
        step_elapsed: Duration::from_secs(11),
        ..f.view(&m, "db-0")
    };
    let p = next(&late, &upgrade(standby("db-1")), false);
    assert!(p.waiting.is_some() && !p.catching_up, "{p:?}");
    // Caught up: the step is done, nothing to wait on.
    m[1].probe.as_mut().unwrap().position = pos(100);
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert!(!p.catching_up && p.waiting.is_none(), "{p:?}");
}

#[test]
fn a_restarted_standby_that_leads_alone_is_repointed() {
    let f = Fixture::new();
    let mut m = members();
    upgrade_member(&mut m[1]);
    let p1 = m[1].probe.as_mut().unwrap();
    p1.role = Role::Primary;
    p1.following = None;
    p1.streaming = false;
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert_eq!(
        p.act,
        Act::Repoint {
            members: vec!["db-1".into()],
            primary: "db-0".into()
        }
    );
}

#[test]
fn a_standby_that_does_not_start_fails_the_step_with_the_primary_untouched() {
    let mut f = Fixture::new();
    let mut m = members();
    m[1].version = Some(DST.into());
    m[1].ready = false;
    m[1].image_current = false;
    m[1].waiting = Some("ErrImagePull: image not mapped".into());
    f.policy.step_timeout_seconds = 10;
    let late = View {
        step_elapsed: Duration::from_secs(11),
        ..f.view(&m, "db-0")
    };
    let p = next(&late, &upgrade(standby("db-1")), false);
    let failure = p.upgrade.and_then(|u| u.failure).expect("failure");
    assert!(
        failure.contains("db-1 did not start on 7.0.15: ErrImagePull"),
        "{failure}"
    );
    assert!(failure.contains("primary db-0 is untouched"), "{failure}");
    assert_eq!(p.act, Act::None);
}

#[test]
fn the_lag_bound_and_the_precheck_speak_in_the_datastore_unit() {
    let mut f = Fixture::new();
    let mut m = members();
    m[1].probe.as_mut().unwrap().position = pos(90);
    assert!(!f.view(&m, "db-0").caught_up(&m[1]));
    let e = precheck(&f.view(&m, "db-0")).unwrap_err();
    assert!(
        e.contains("db-1 lags 10 bytes") && e.contains("maxLagBytes 0"),
        "{e}"
    );
    f.policy.max_lag_bytes = 10;
    assert!(f.view(&m, "db-0").caught_up(&m[1]));
    m[2].probe.as_mut().unwrap().following = Some("10.0.0.9".into());
    let e = precheck(&f.view(&m, "db-0")).unwrap_err();
    assert!(
        e.contains("db-2 is not replicating from the primary db-0"),
        "{e}"
    );
}

/// The whole guarded switchover, stage by stage, with the crash-safe record of each.
#[test]
fn the_switchover_fences_chooses_after_the_fence_promotes_fenced_and_unfences_last() {
    let mut f = Fixture::new();
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    let start = upgrade(UpgradeStep::of(StepKind::Switchover));
    let p = next(&f.view(&m, "db-0"), &start, false);
    assert_eq!(
        p.act,
        Act::Fence {
            member: "db-0".into()
        }
    );
    let s = sw(&p);
    assert_eq!(
        (s.stage, s.from.as_str(), s.candidate.as_ref()),
        (SwitchoverStage::Fencing, "db-0", None)
    );
    let u = p.upgrade.unwrap();

    // Not fenced yet: fence again, choose nobody.
    assert_eq!(
        next(&f.view(&m, "db-0"), &u, false).act,
        Act::Fence {
            member: "db-0".into()
        }
    );
    // Fenced at 180; db-2 is further along than db-1: chosen now.
    m[0].probe.as_mut().unwrap().fenced = true;
    m[0].probe.as_mut().unwrap().position = pos(180);
    m[0].fence_position = Some(pos(180));
    m[1].probe.as_mut().unwrap().position = pos(150);
    m[2].probe.as_mut().unwrap().position = pos(170);
    let p = next(&f.view(&m, "db-0"), &u, false);
    let s = sw(&p);
    assert_eq!(s.stage, SwitchoverStage::CatchingUp);
    assert_eq!(s.candidate.as_deref(), Some("db-2"));
    assert_eq!(s.fence_position.as_deref(), Some("aaa:180"));
    let u = p.upgrade.unwrap();
    f.goal = Some(pos(180));

    // Promoted only once it holds the fenced position; recorded as primary first.
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert!(p.waiting.is_some() && p.act == Act::None, "{p:?}");
    m[2].probe.as_mut().unwrap().position = pos(180);
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(
        p.act,
        Act::Promote {
            member: "db-2".into(),
            at_least: Some(pos(180)),
        }
    );
    assert_eq!(p.primary.as_deref(), Some("db-2"));
    assert_eq!(sw(&p).stage, SwitchoverStage::Promoting);
    let u = p.upgrade.unwrap();

    // Promoted (still fenced), with the old history up to the fence: the label moves in the
    // same pass, then the fence is lifted; the others are repointed after writes are back.
    let p2 = m[2].probe.as_mut().unwrap();
    p2.role = Role::Primary;
    p2.following = None;
    p2.streaming = false;
    p2.position = Position::Redis {
        replid: "bbb".into(),
        offset: 190,
        previous: Some(("aaa".into(), 181)),
    };
    let p = next(&f.view(&m, "db-2"), &u, false);
    assert_eq!(sw(&p).stage, SwitchoverStage::Repointing);
    assert_eq!(
        p.act,
        Act::Publish {
            primary: "db-2".into()
        }
    );
    let u = p.upgrade.unwrap();
    f.published = "db-2".into();
    let p = next(&f.view(&m, "db-2"), &u, false);
    assert_eq!(
        p.act,
        Act::Unfence {
            member: "db-2".into()
        }
    );
    assert_eq!(sw(&p).stage, SwitchoverStage::Unfencing);
    let u = p.upgrade.unwrap();
    m[2].probe.as_mut().unwrap().fenced = false;
    let p = next(&f.view(&m, "db-2"), &u, false);
    assert_eq!(
        p.act,
        Act::Repoint {
            members: vec!["db-0".into(), "db-1".into()],
            primary: "db-2".into()
        }
    );
    // Writable from here: the switchover's window ends now, before the repoints.
    assert!(sw(&p).writable_at.is_some(), "{:?}", sw(&p));
    lead(&mut m, 2);
    m[0].probe.as_mut().unwrap().fenced = true;

    // Unfenced: the switchover is over, the old primary is upgraded as a standby next.
    m[2].probe.as_mut().unwrap().fenced = false;
    let p = next(&f.view(&m, "db-2"), &u, false);
    assert_eq!(recorded(&p), standby("db-0"));
    assert!(p.upgrade.unwrap().switchover.is_none());
}

#[test]
fn a_switchover_is_measured_from_its_fence_to_the_pass_that_sees_the_leader_unfenced() {
    let at = |ms: i64| MicroTime(jiff::Timestamp::from_millisecond(ms).unwrap());
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(SwitchoverState {
        fenced_at: Some(at(1_000)),
        ..switching(SwitchoverStage::Unfencing, "db-2", Some("aaa:190"))
    });
    let done = UpgradeInFlight {
        switchover: None,
        step: standby("db-0"),
        ..u.clone()
    };
    let m = measured_switchover(&u, Some(&done), &at(1_137)).expect("measured");
    assert_eq!((m.from.as_str(), m.to.as_str()), ("db-0", "db-2"));
    assert_eq!((m.window_ms, m.undone), (137, false));
    assert_eq!((m.fenced_at, m.writable_at), (at(1_000), at(1_137)));
    // The upgrade may end in the same pass (a planned switchover, a switch back).
    assert!(measured_switchover(&u, None, &at(1_137)).is_some());
    // Seen writable in an earlier pass that still had members to repoint: it ended there.
    let mut seen = u.clone();
    seen.switchover.as_mut().unwrap().writable_at = Some(at(1_090));
    let m = measured_switchover(&seen, Some(&done), &at(1_400)).expect("measured");
    assert_eq!((m.window_ms, m.writable_at), (90, at(1_090)));
    // Still lifting the fence: nothing to measure yet.
    assert_eq!(measured_switchover(&u, Some(&u), &at(1_137)), None);
    // Any earlier stage ends only by going on, never unmeasured into nothing.
    let mut fencing = u.clone();
    fencing.switchover.as_mut().unwrap().stage = SwitchoverStage::Promoting;
    assert_eq!(measured_switchover(&fencing, Some(&done), &at(1_137)), None);
    // Undone: the old primary leads again; its writes were refused all the same.
    let mut undone = u.clone();
    undone.switchover.as_mut().unwrap().undoing = Some("too slow".into());
    let m = measured_switchover(&undone, Some(&done), &at(61_000)).expect("measured");
    assert_eq!(
        (m.to.as_str(), m.window_ms, m.undone),
        ("db-0", 60_000, true)
    );
    // The fence time survives the status round trip to the millisecond (a `Time` keeps whole
    // seconds only, and made a 145 ms Redis switchover read 659 ms).
    let stored: SwitchoverState =
        serde_json::from_value(serde_json::to_value(u.switchover.clone().unwrap()).unwrap())
            .unwrap();
    assert_eq!(stored.fenced_at, Some(at(1_000)));
    let later = at(1_000_137);
    let back: MicroTime =
        serde_json::from_value(serde_json::to_value(later.clone()).unwrap()).unwrap();
    assert_eq!(back, later);
}

#[test]
fn nothing_is_fenced_until_an_upgraded_standby_is_caught_up() {
    let mut f = Fixture::new();
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
        x.ready = false; // e.g. a readiness probe flapping under load
    }
    let u = upgrade(UpgradeStep::of(StepKind::Switchover));
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert!(
        p.act == Act::None && p.upgrade.as_ref().unwrap().switchover.is_none(),
        "{p:?}"
    );
    f.policy.step_timeout_seconds = 10;
    let late = View {
        step_elapsed: Duration::from_secs(11),
        ..f.view(&m, "db-0")
    };
    let failure = next(&late, &u, false).upgrade.unwrap().failure.unwrap();
    assert!(failure.contains("nothing was fenced"), "{failure}");
}

#[test]
fn auto_restarts_the_primary_in_place_only_when_an_outage_is_accepted_else_waits() {
    let mut f = Fixture::new();
    f.policy.primary_update_method = PrimaryUpdateMethod::Auto;
    f.policy.step_timeout_seconds = 10;
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
        x.probe.as_mut().unwrap().position = pos(40); // Ready, but far behind
    }
    let u = upgrade(UpgradeStep::of(StepKind::Switchover));
    // Within the timeout: waiting, like Switchover.
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(
        (p.act.clone(), p.upgrade.clone()),
        (Act::None, Some(u.clone()))
    );
    fn late<'a>(f: &'a Fixture, m: &'a [Member]) -> View<'a> {
        View {
            step_elapsed: Duration::from_secs(11),
            ..f.view(m, "db-0")
        }
    }
    // No outage accepted: it keeps waiting, says why, fails nothing and fences nothing.
    let p = next(&late(&f, &m), &u, false);
    let r = p.upgrade.clone().unwrap();
    assert!(r.failure.is_none() && r.switchover.is_none() && p.act == Act::None);
    assert!(p.waiting.unwrap().contains("allowOffline"));
    // Accepted: the step becomes an in-place restart of the primary, with the reason.
    f.policy.allow_offline = true;
    let p = next(&late(&f, &m), &u, false);
    let r = p.upgrade.clone().unwrap();
    assert_eq!(r.step, UpgradeStep::on(StepKind::RestartPrimary, "db-0"));
    let why = r.restarted_in_place.clone().expect("the reason");
    assert!(why.contains("no standby on 7.0.15 caught up"), "{why}");
    assert!(r.switchover.is_none() && r.failure.is_none());
    // The next pass restarts it on the target: its writes stop for the restart only.
    let p = next(&f.view(&m, "db-0"), &r, false);
    assert!(
        matches!(&p.act, Act::SetVersion { member, .. } if member == "db-0"),
        "{p:?}"
    );
    // The default method still fails the step with nothing fenced.
    f.policy.primary_update_method = PrimaryUpdateMethod::Switchover;
    let failure = next(&late(&f, &m), &u, false)
        .upgrade
        .unwrap()
        .failure
        .unwrap();
    assert!(failure.contains("nothing was fenced"), "{failure}");
}

#[test]
fn past_the_fence_deadline_the_switchover_is_undone_and_fails_with_nothing_lost() {
    let mut f = Fixture::new();
    f.goal = Some(pos(500));
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    m[0].probe.as_mut().unwrap().fenced = true;
    m[0].probe.as_mut().unwrap().position = pos(500);
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::CatchingUp,
        "db-1",
        Some("aaa:500"),
    ));
    let late = View {
        fence_elapsed: Duration::from_secs(61),
        ..f.view(&m, "db-0")
    };
    let p = next(&late, &u, false);
    let s = sw(&p);
    assert_eq!(s.stage, SwitchoverStage::Promoting);
    assert_eq!(
        s.candidate.as_deref(),
        Some("db-0"),
        "back to the old primary"
    );
    assert!(
        s.undoing
            .as_deref()
            .unwrap()
            .contains("fenceTimeoutSeconds (60s)")
    );
    assert_eq!(p.primary.as_deref(), Some("db-0"));
    assert_eq!(p.act, Act::None, "db-0 still leads: nothing to promote");
    let u = p.upgrade.unwrap();
    // The undo goes through the same stages (the label never left db-0), and is never cut
    // short by the deadline.
    let p = next(&late, &u, false);
    assert_eq!(sw(&p).stage, SwitchoverStage::Unfencing);
    assert_eq!(
        p.act,
        Act::Unfence {
            member: "db-0".into()
        }
    );
    let u = p.upgrade.unwrap();
    m[0].probe.as_mut().unwrap().fenced = false;
    let p = next(&f.view(&m, "db-0"), &u, false);
    let failure = p.upgrade.unwrap().failure.unwrap();
    assert!(
        failure.contains("undone") && failure.contains("db-0 is the primary again"),
        "{failure}"
    );
}

#[test]
fn past_the_fence_deadline_a_candidate_promoted_with_everything_goes_on() {
    let mut f = Fixture::new();
    f.goal = Some(pos(500));
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    lead(&mut m, 1);
    m[1].probe.as_mut().unwrap().position = pos(520);
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::Promoting,
        "db-1",
        Some("aaa:500"),
    ));
    let late = View {
        fence_elapsed: Duration::from_secs(61),
        ..f.view(&m, "db-1")
    };
    let p = next(&late, &u, false);
    let s = sw(&p);
    assert_eq!(s.undoing, None, "{s:?}");
    assert_eq!(s.stage, SwitchoverStage::Repointing);
    assert_ne!(
        p.primary.as_deref(),
        Some("db-0"),
        "the role stays with db-1"
    );
    // Not seen leading (it does not answer): the deadline undoes it, as before.
    m[1].probe = None;
    let p = next(
        &View {
            fence_elapsed: Duration::from_secs(61),
            ..f.view(&m, "db-1")
        },
        &u,
        false,
    );
    assert!(sw(&p).undoing.is_some(), "{:?}", sw(&p));
}

#[test]
fn a_candidate_that_leads_without_the_fenced_writes_is_undone() {
    let mut f = Fixture::new();
    f.goal = Some(pos(500));
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    m[0].probe.as_mut().unwrap().fenced = true;
    // db-1 restarted from an older copy and came back leading a history of its own.
    let p1 = m[1].probe.as_mut().unwrap();
    p1.role = Role::Primary;
    p1.following = None;
    p1.position = Position::parse_redis("zzz:20").unwrap();
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::Promoting,
        "db-1",
        Some("aaa:500"),
    ));
    let p = next(&f.view(&m, "db-1"), &u, false);
    assert_eq!(p.primary.as_deref(), Some("db-0"));
    let s = sw(&p);
    assert_eq!(s.candidate.as_deref(), Some("db-0"));
    assert!(
        s.undoing
            .unwrap()
            .contains("without everything the fenced primary db-0 wrote")
    );
}

#[test]
fn the_label_never_moves_while_another_member_accepts_writes() {
    let mut f = Fixture::new();
    f.goal = Some(pos(100));
    let mut m = members();
    lead(&mut m, 1);
    m[0].probe.as_mut().unwrap().role = Role::Primary;
    m[0].probe.as_mut().unwrap().fenced = false; // someone unfenced the old primary
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::Repointing,
        "db-1",
        Some("aaa:100"),
    ));
    let p = next(&f.view(&m, "db-1"), &u, false);
    assert_eq!(p.act, Act::None);
    assert!(p.waiting.unwrap().contains("db-0 accepts writes"));
}

#[test]
fn restart_method_and_single_members_restart_the_primary_in_place_then_unfence_it() {
    let mut f = Fixture::new();
    f.policy.primary_update_method = PrimaryUpdateMethod::Restart;
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-2")), false);
    assert_eq!(
        recorded(&p),
        UpgradeStep::on(StepKind::RestartPrimary, "db-0")
    );
    // Back on the new version it boots fenced: unfence it (nobody else writes), then done.
    upgrade_member(&mut m[0]);
    m[0].probe.as_mut().unwrap().fenced = true;
    let step = upgrade(UpgradeStep::on(StepKind::RestartPrimary, "db-0"));
    assert_eq!(
        next(&f.view(&m, "db-0"), &step, false).act,
        Act::Unfence {
            member: "db-0".into()
        }
    );
    m[0].probe.as_mut().unwrap().fenced = false;
    let p = next(&f.view(&m, "db-0"), &step, false);
    assert!(p.upgrade.is_none() && !p.reverted, "{p:?}");
    let single = &members()[..1];
    let p = next(
        &Fixture::new().view(single, "db-0"),
        &upgrade(UpgradeStep::default()),
        false,
    );
    assert_eq!(
        recorded(&p),
        UpgradeStep::on(StepKind::RestartPrimary, "db-0")
    );
}

#[test]
fn second_switch_returns_to_the_original_primary() {
    let mut f = Fixture::new();
    f.policy.second_switch = true;
    let mut m = members();
    for x in &mut m {
        upgrade_member(x);
    }
    lead(&mut m, 1);
    let p = next(&f.view(&m, "db-1"), &upgrade(standby("db-0")), false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::SwitchBack));
    // Only the original primary is a candidate for the switch back.
    f.published = "db-1".into();
    let mut u = p.upgrade.unwrap();
    u.switchover = None;
    let p = next(&f.view(&m, "db-1"), &u, false);
    assert_eq!(
        p.act,
        Act::Fence {
            member: "db-1".into()
        }
    );
    m[1].probe.as_mut().unwrap().fenced = true;
    m[1].fence_position = Some(pos(100));
    m[2].probe.as_mut().unwrap().position = pos(100);
    let p = next(&f.view(&m, "db-1"), &p.upgrade.unwrap(), false);
    assert_eq!(sw(&p).candidate.as_deref(), Some("db-0"));
    lead(&mut m, 0);
    let p = next(
        &f.view(&m, "db-0"),
        &upgrade(UpgradeStep::of(StepKind::SwitchBack)),
        false,
    );
    assert!(p.upgrade.is_none(), "back on the original primary: done");
}

#[test]
fn reverting_returns_standbys_to_the_source_and_never_touches_the_primary() {
    let f = Fixture::new();
    let mut m = members();
    upgrade_member(&mut m[1]);
    let p = next(&f.view(&m, "db-0"), &upgrade(UpgradeStep::default()), true);
    assert_eq!(recorded(&p), standby("db-1"));
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), true);
    assert!(
        matches!(&p.act, Act::SetVersion { member, version, .. } if member == "db-1" && version == SRC)
    );
    m[1].version = Some(SRC.into());
    m[1].probe.as_mut().unwrap().version = SRC.into();
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), true);
    assert!(p.upgrade.is_none() && p.reverted, "{p:?}");
}

#[test]
fn hold_stops_before_the_primary_and_commit_goes_on() {
    let f = Fixture::new();
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    let mut u = upgrade(standby("db-2"));
    u.hold = true;
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::AwaitingCommit));
    let mut held = p.upgrade.unwrap();
    let p = next(&f.view(&m, "db-0"), &held, false);
    assert_eq!(p.upgrade.as_ref(), Some(&held), "waits");
    held.hold = false; // Commit
    let p = next(&f.view(&m, "db-0"), &held, false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::Switchover));
}

#[test]
fn rollback_from_awaiting_commit_returns_the_standbys_only() {
    let f = Fixture::new();
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    let mut u = upgrade(UpgradeStep::of(StepKind::AwaitingCommit));
    u.hold = true;
    u.rollback = true;
    assert!(revertible(&f.view(&m, "db-0"), &u));
    let p = next(&f.view(&m, "db-0"), &u, true);
    assert_eq!(recorded(&p), standby("db-1"));
}

#[test]
fn cancel_goes_back_between_steps_while_the_primary_runs_the_source() {
    let f = Fixture::new();
    let mut m = members();
    upgrade_member(&mut m[1]);
    let mut u = upgrade(standby("db-1"));
    u.cancel = true;
    let p = next(&f.view(&m, "db-0"), &u, false);
    let rec = p.upgrade.unwrap();
    assert!(rec.rollback, "{rec:?}");
    assert_eq!(rec.step, standby("db-1"));
    for x in &mut m {
        upgrade_member(x);
    }
    let mut after = upgrade(standby("db-2"));
    after.cancel = true;
    assert!(!revertible(&f.view(&m, "db-1"), &after));
}

#[test]
fn in_place_restarts_every_member_then_unfences_and_repoints() {
    let f = Fixture::new();
    let mut m = members();
    let mut u = upgrade(UpgradeStep::default());
    u.type_ = Some(UpgradeType::InPlace);
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::RestartAll));
    u.step = UpgradeStep::of(StepKind::RestartAll);
    let mut changed = vec![];
    while let Act::SetVersion { member, .. } = next(&f.view(&m, "db-0"), &u, false).act {
        let i = m.iter().position(|x| x.name == member).unwrap();
        m[i].version = Some(DST.into());
        changed.push(member);
    }
    assert_eq!(
        changed,
        ["db-0", "db-1", "db-2"],
        "all members, no waiting between"
    );
    for x in &mut m {
        upgrade_member(x);
    }
    m[0].probe.as_mut().unwrap().fenced = true; // booted fenced
    let p2 = m[2].probe.as_mut().unwrap();
    p2.role = Role::Primary; // came back alone
    p2.following = None;
    assert_eq!(
        next(&f.view(&m, "db-0"), &u, false).act,
        Act::Unfence {
            member: "db-0".into()
        }
    );
    m[0].probe.as_mut().unwrap().fenced = false;
    assert_eq!(
        next(&f.view(&m, "db-0"), &u, false).act,
        Act::Repoint {
            members: vec!["db-2".into()],
            primary: "db-0".into()
        }
    );
    lead(&mut m, 0);
    m[0].probe.as_mut().unwrap().fenced = false;
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert!(p.upgrade.is_none(), "{p:?}");
}

#[test]
fn a_closed_window_holds_forward_steps_but_not_a_switchover_in_progress() {
    let mut f = Fixture::new();
    f.goal = Some(pos(100));
    let mut m = members();
    upgrade_member(&mut m[1]);
    let closed = View {
        may_start_step: false,
        ..f.view(&m, "db-0")
    };
    let p = next(&closed, &upgrade(standby("db-1")), false);
    assert_eq!(p.upgrade.unwrap().step, standby("db-1"), "db-2 waits");
    let mut back = upgrade(standby("db-1"));
    back.rollback = true;
    assert!(matches!(
        next(&closed, &back, true).act,
        Act::SetVersion { .. }
    ));
    // The end of a switchover always finishes.
    for x in &mut m {
        upgrade_member(x);
    }
    lead(&mut m, 1);
    m[1].probe.as_mut().unwrap().fenced = true;
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(SwitchoverStage::Unfencing, "db-1", None));
    let closed = View {
        may_start_step: false,
        ..f.view(&m, "db-1")
    };
    assert_eq!(
        next(&closed, &u, false).act,
        Act::Unfence {
            member: "db-1".into()
        }
    );
}

#[test]
fn a_request_checks_the_members_before_its_first_step() {
    let f = Fixture::new();
    let mut m = members();
    m[2].ready = false;
    let mut u = upgrade(UpgradeStep::default());
    u.request = Some("ns/r".into());
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert!(p.waiting.unwrap().contains("db-2 is not Ready"));
    let late = View {
        step_elapsed: Duration::from_secs(601),
        ..f.view(&m, "db-0")
    };
    let failure = next(&late, &u, false).upgrade.unwrap().failure.unwrap();
    assert!(failure.contains("db-2 is not Ready"), "{failure}");
    assert!(failure.contains("nothing was changed"), "{failure}");
}

#[test]
fn a_fenced_primary_that_restarted_sets_a_new_goal_and_a_restarted_candidate_is_promoted_again() {
    let mut f = Fixture::new();
    f.goal = Some(pos(500));
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    // db-0 was fenced at aaa:500, then killed: it booted fenced with a history of its own.
    let restarted = Position::parse_redis("fff:40").unwrap();
    let p0 = m[0].probe.as_mut().unwrap();
    p0.fenced = true;
    p0.position = restarted.clone();
    m[0].fence_position = Some(restarted);
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::CatchingUp,
        "db-1",
        Some("aaa:500"),
    ));
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(sw(&p).fence_position.as_deref(), Some("fff:40"));
    assert_eq!(p.act, Act::None);

    // Later, the promoted candidate is killed before the label moved: it comes back following
    // db-0. It is promoted again once it holds the goal.
    f.goal = Some(Position::parse_redis("fff:40").unwrap());
    m[1].probe.as_mut().unwrap().position = Position::parse_redis("fff:40").unwrap();
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::Repointing,
        "db-1",
        Some("fff:40"),
    ));
    let p = next(&f.view(&m, "db-1"), &u, false);
    assert_eq!(
        p.act,
        Act::Promote {
            member: "db-1".into(),
            at_least: Some(Position::parse_redis("fff:40").unwrap()),
        }
    );
    assert_eq!(sw(&p).stage, SwitchoverStage::Promoting);
}

/// Found by the member-kill test: when the candidate already holds the fenced position, it is
/// chosen and promoted in the pass that first sees the fence — before that position is on
/// record — and the promotion must still carry it, so the engine refuses a candidate that
/// restarted empty in the meantime.
#[test]
fn a_promotion_decided_in_the_fencing_pass_carries_the_fence_position() {
    let f = Fixture::new(); // no fence position on record yet
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    m[0].probe.as_mut().unwrap().fenced = true;
    m[0].fence_position = Some(pos(100));
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(SwitchoverState {
        stage: SwitchoverStage::Fencing,
        candidate: None,
        fence_position: None,
        ..switching(SwitchoverStage::Fencing, "db-1", None)
    });
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(sw(&p).stage, SwitchoverStage::Promoting);
    assert_eq!(sw(&p).fence_position.as_deref(), Some("aaa:100"));
    assert_eq!(
        p.act,
        Act::Promote {
            member: "db-1".into(),
            at_least: Some(pos(100)),
        }
    );
}

#[test]
fn no_member_restarts_while_another_is_not_ready() {
    let f = Fixture::new();
    let mut m = members();
    m[0].ready = false; // e.g. the new primary just restarted after a crash
    let p = next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert_eq!(p.act, Act::None);
    assert!(p.waiting.unwrap().contains("db-0 is not Ready"));
    m[0].ready = true;
    assert!(matches!(
        next(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false).act,
        Act::SetVersion { .. }
    ));
}

#[test]
fn a_fenced_primary_restarted_before_the_promotion_restarts_the_catch_up() {
    let mut f = Fixture::new();
    f.goal = Some(pos(500));
    let mut m = members();
    for x in &mut m[1..] {
        upgrade_member(x);
    }
    let restarted = Position::parse_redis("fff:30").unwrap();
    let p0 = m[0].probe.as_mut().unwrap();
    p0.fenced = true;
    p0.position = restarted.clone();
    m[0].fence_position = Some(restarted);
    m[1].probe.as_mut().unwrap().position = Position::parse_redis("fff:10").unwrap();
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::Promoting,
        "db-1",
        Some("aaa:500"),
    ));
    let p = next(&f.view(&m, "db-1"), &u, false);
    let s = sw(&p);
    assert_eq!(
        (s.stage, s.fence_position.as_deref()),
        (SwitchoverStage::CatchingUp, Some("fff:30"))
    );
    assert_eq!(
        p.primary.as_deref(),
        Some("db-0"),
        "db-0 holds everything again"
    );
    assert_eq!(p.act, Act::None);
}

/// A planned switchover (type Switchover): every member on SRC, nothing restarted.
fn planned(to: Option<&str>) -> UpgradeInFlight {
    UpgradeInFlight {
        type_: Some(UpgradeType::Switchover),
        switchover_to: to.map(String::from),
        request: Some("ns/sw".into()),
        ..UpgradeInFlight::new(SRC, SRC, "db-0", Time(jiff::Timestamp::UNIX_EPOCH))
    }
}

#[test]
fn a_planned_switchover_restarts_nothing_and_fences_at_once() {
    let f = Fixture::new();
    let m = members();
    let p = next(&f.view(&m, "db-0"), &planned(None), false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::Switchover));
    let u = p.upgrade.unwrap();
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(
        p.act,
        Act::Fence {
            member: "db-0".into()
        }
    );
    // Once the role has moved, it is done: the old primary stays a standby on the same version.
    let mut m = members();
    lead(&mut m, 1);
    let done = UpgradeInFlight {
        step: UpgradeStep::of(StepKind::Switchover),
        ..planned(None)
    };
    let p = next(&f.view(&m, "db-1"), &done, false);
    assert!(p.upgrade.is_none() && !p.reverted, "{p:?}");
}

#[test]
fn a_planned_switchover_to_a_named_member_takes_it_even_when_another_is_further() {
    let f = Fixture::new();
    let mut m = members();
    let u = UpgradeInFlight {
        step: UpgradeStep::of(StepKind::Switchover),
        ..planned(Some("db-1"))
    };
    let p = next(&f.view(&m, "db-0"), &u, false);
    let u = p.upgrade.unwrap();
    m[0].probe.as_mut().unwrap().fenced = true;
    m[0].probe.as_mut().unwrap().position = pos(180);
    m[0].fence_position = Some(pos(180));
    m[1].probe.as_mut().unwrap().position = pos(150);
    m[2].probe.as_mut().unwrap().position = pos(180);
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(sw(&p).candidate.as_deref(), Some("db-1"), "{p:?}");

    // A named member that is not caught up: nothing is fenced, and past the step timeout the
    // job fails saying which member did not catch up.
    let mut f = Fixture::new();
    let mut m = members();
    m[1].ready = false;
    let start = UpgradeInFlight {
        step: UpgradeStep::of(StepKind::Switchover),
        ..planned(Some("db-1"))
    };
    let p = next(&f.view(&m, "db-0"), &start, false);
    assert_eq!(p.act, Act::None, "{p:?}");
    f.policy.step_timeout_seconds = 10;
    let mut v = f.view(&m, "db-0");
    v.step_elapsed = Duration::from_secs(11);
    let p = next(&v, &start, false);
    let why = p.upgrade.and_then(|u| u.failure).expect("a failure");
    assert!(
        why.contains("db-1 (switchoverTo) did not catch up"),
        "{why}"
    );
    assert!(why.contains("nothing was fenced"), "{why}");
}

fn offline(step: UpgradeStep) -> UpgradeInFlight {
    UpgradeInFlight {
        offline: Some(OfflineUpgrade::default()),
        request: Some("ns/req".into()),
        ..upgrade(step)
    }
}

fn check(key: &str, outcome: CheckOutcome) -> super::super::model::OfflineCheck {
    super::super::model::OfflineCheck {
        key: key.into(),
        outcome,
    }
}

#[test]
fn an_offline_hop_checks_first_and_a_failed_check_stops_with_nothing_stopped() {
    let f = Fixture::new();
    let m = members();
    let u = offline(UpgradeStep::default());
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert!(
        matches!(&p.act, Act::CheckOffline { member, key, .. } if member == "db-0" && *key == check_key(&u)),
        "{p:?}"
    );
    // Another attempt's pod: deleted by the same act; while it goes, wait.
    let stale = check("6.2.14->7.0.15@1", CheckOutcome::Deleting);
    let v = View {
        offline_check: Some(&stale),
        ..f.view(&m, "db-0")
    };
    assert_eq!(next(&v, &u, false).act, Act::None);
    let failed = check(
        &check_key(&u),
        CheckOutcome::Failed("Checking for reg* data types in user tables fatal".into()),
    );
    let v = View {
        offline_check: Some(&failed),
        ..f.view(&m, "db-0")
    };
    let p = next(&v, &u, false);
    let why = p.upgrade.and_then(|u| u.failure).expect("failed");
    assert!(
        why.contains("reg* data types") && why.contains("nothing was stopped"),
        "{why}"
    );
    assert_eq!(p.act, Act::None);
    let passed = check(&check_key(&u), CheckOutcome::Passed);
    let v = View {
        offline_check: Some(&passed),
        ..f.view(&m, "db-0")
    };
    let p = next(&v, &u, false);
    let rec = p.upgrade.expect("a record");
    assert!(rec.offline.as_ref().is_some_and(|o| o.checked));
    // The primary goes first: the standbys cannot follow a converted primary anyway.
    assert_eq!(rec.step, UpgradeStep::on(StepKind::RestartPrimary, "db-0"));
}

#[test]
fn an_offline_hop_converts_the_primary_holds_read_only_and_rolls_back_losing_nothing() {
    let f = Fixture::new();
    let mut m = members();
    let mut u = offline(UpgradeStep::on(StepKind::RestartPrimary, "db-0"));
    u.offline.as_mut().unwrap().checked = true;
    u.hold = true;
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert!(
        matches!(&p.act, Act::SetVersion { member, version, .. } if member == "db-0" && version == DST)
    );
    let u = p.upgrade.expect("a record");
    assert!(
        u.offline.as_ref().unwrap().stopped_at.is_some(),
        "outage start recorded"
    );
    // Converted, back read-only (fenced): held, not unfenced.
    upgrade_member(&mut m[0]);
    m[0].probe.as_mut().unwrap().fenced = true;
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::AwaitingCommit));
    assert_eq!(p.act, Act::None);
    let held = p.upgrade.unwrap();
    assert!(revertible(&f.view(&m, "db-0"), &held), "no write taken yet");
    // Rollback: only the primary goes back, onto its kept data.
    let back = UpgradeInFlight {
        rollback: true,
        ..held.clone()
    };
    let p = next(&f.view(&m, "db-0"), &back, true);
    assert_eq!(
        recorded(&p),
        UpgradeStep::on(StepKind::RestartPrimary, "db-0")
    );
    let p = next(&f.view(&m, "db-0"), &p.upgrade.unwrap(), true);
    assert!(
        matches!(&p.act, Act::SetVersion { version, .. } if version == SRC),
        "{p:?}"
    );
    // Commit instead: writes let in, recorded with the outage before the act.
    let commit = UpgradeInFlight {
        hold: false,
        ..held
    };
    let p = next(&f.view(&m, "db-0"), &commit, false);
    assert_eq!(
        recorded(&p),
        UpgradeStep::on(StepKind::RestartPrimary, "db-0")
    );
    let p = next(&f.view(&m, "db-0"), &p.upgrade.unwrap(), false);
    assert_eq!(
        p.act,
        Act::Unfence {
            member: "db-0".into()
        }
    );
    let u = p.upgrade.unwrap();
    let off = u.offline.clone().unwrap();
    assert!(off.writable_at.is_some() && off.outage_ms.is_some());
    assert!(
        !revertible(&f.view(&m, "db-0"), &u),
        "writes taken: forward only"
    );
    // Then finalize, then the standbys are cloned again one at a time.
    m[0].probe.as_mut().unwrap().fenced = false;
    let p = next(&f.view(&m, "db-0"), &u, false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::Finalize));
    let fin = p.upgrade.unwrap();
    let v = View {
        offline_leftovers: Some(true),
        ..f.view(&m, "db-0")
    };
    assert_eq!(
        next(&v, &fin, false).act,
        Act::FinishOffline {
            member: "db-0".into()
        }
    );
    let v = View {
        offline_leftovers: Some(false),
        ..f.view(&m, "db-0")
    };
    assert_eq!(recorded(&next(&v, &fin, false)), standby("db-1"));
}

#[test]
fn a_pass_records_a_step_with_its_first_act_but_starts_no_switchover_as_one_ends() {
    let mut f = Fixture::new();
    let mut m = members();
    // The step and its first act in one record: the restart of db-1 starts at once.
    let p = pass(&f.view(&m, "db-0"), &upgrade(UpgradeStep::default()), false);
    assert_eq!(recorded(&p), standby("db-1"));
    assert!(
        matches!(&p.act, Act::SetVersion { member, .. } if member == "db-1"),
        "{p:?}"
    );
    upgrade_member(&mut m[1]);
    let p = pass(&f.view(&m, "db-0"), &upgrade(standby("db-1")), false);
    assert_eq!(recorded(&p), standby("db-2"));
    assert!(matches!(&p.act, Act::SetVersion { member, .. } if member == "db-2"));
    // The switchover's fence goes out with its step.
    upgrade_member(&mut m[2]);
    let p = pass(&f.view(&m, "db-0"), &upgrade(standby("db-2")), false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::Switchover));
    assert_eq!(
        (sw(&p).stage, &p.act),
        (
            SwitchoverStage::Fencing,
            &Act::Fence {
                member: "db-0".into()
            }
        )
    );
    // A new step whose first act must wait is recorded alone, with nothing done: db-1 is
    // done, but db-2 restarts only once the primary's pod is Ready again.
    let mut waiting = members();
    upgrade_member(&mut waiting[1]);
    waiting[0].ready = false;
    let p = pass(&f.view(&waiting, "db-0"), &upgrade(standby("db-1")), false);
    assert_eq!((recorded(&p), &p.act), (standby("db-2"), &Act::None));
    assert_eq!(
        p,
        next(&f.view(&waiting, "db-0"), &upgrade(standby("db-1")), false)
    );

    // A switchover that ends is measured against the next record, so a switch back that
    // would start in the same pass waits for the next one.
    f.policy.second_switch = true;
    f.published = "db-2".into();
    upgrade_member(&mut m[0]);
    lead(&mut m, 2);
    let mut u = upgrade(UpgradeStep::of(StepKind::Switchover));
    u.switchover = Some(switching(
        SwitchoverStage::Unfencing,
        "db-2",
        Some("aaa:100"),
    ));
    let p = pass(&f.view(&m, "db-2"), &u, false);
    assert_eq!(recorded(&p), UpgradeStep::of(StepKind::SwitchBack));
    assert_eq!(p.act, Act::None, "{p:?}");
    assert!(p.upgrade.unwrap().switchover.is_none());
}

/// db-1 promoted (fenced, still recorded at `stage`) and published; db-0 the fenced old
/// primary, db-2 still following it.
fn promoted_db1(stage: SwitchoverStage) -> (Fixture, Vec<Member>, UpgradeInFlight) {
    let mut f = Fixture::new();
    f.replicated = true;
    f.published = "db-1".into();
    let mut m = members();
    for x in &mut m {
        upgrade_member(x);
    }
    m[0].probe.as_mut().unwrap().fenced = true;
    let p1 = m[1].probe.as_mut().unwrap();
    p1.role = Role::Primary;
    p1.following = None;
    p1.streaming = false;
    let u = UpgradeInFlight {
        switchover: Some(switching(stage, "db-1", Some("aaa:100"))),
        ..upgrade(UpgradeStep::of(StepKind::Switchover))
    };
    (f, m, u)
}

#[test]
fn a_replicated_primary_gets_its_standbys_before_it_is_unfenced() {
    let (mut f, mut m, u) = promoted_db1(SwitchoverStage::Repointing);
    // The standby first, not the old primary (whose repoint may be a restart).
    let p = next(&f.view(&m, "db-1"), &u, false);
    let first = Act::Repoint {
        members: vec!["db-2".into()],
        primary: "db-1".into(),
    };
    assert_eq!(p.act, first);
    assert_eq!(sw(&p).stage, SwitchoverStage::Repointing);
    // Reached with the standby still elsewhere (recorded by an earlier operator, say): the
    // same, before any write is let in.
    let (_, _, at_unfencing) = promoted_db1(SwitchoverStage::Unfencing);
    assert_eq!(next(&f.view(&m, "db-1"), &at_unfencing, false).act, first);
    // Once it follows the new primary: the unfence, then the old primary.
    m[2].probe.as_mut().unwrap().following = Some(host(1));
    let p = next(&f.view(&m, "db-1"), &u, false);
    assert_eq!(
        p.act,
        Act::Unfence {
            member: "db-1".into()
        }
    );
    // Asynchronous durability keeps the shorter outage: unfenced first.
    m[2].probe.as_mut().unwrap().following = Some(host(0));
    f.replicated = false;
    let p = next(&f.view(&m, "db-1"), &u, false);
    assert_eq!(
        p.act,
        Act::Unfence {
            member: "db-1".into()
        }
    );
}

#[test]
fn a_replicated_primary_with_only_the_old_primary_left_repoints_it_first() {
    let (f, mut m, u) = promoted_db1(SwitchoverStage::Repointing);
    m.truncate(2);
    let p = next(&f.view(&m, "db-1"), &u, false);
    assert_eq!(
        p.act,
        Act::Repoint {
            members: vec!["db-0".into()],
            primary: "db-1".into(),
        }
    );
}
