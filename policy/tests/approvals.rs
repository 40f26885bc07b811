//! Required human approvals: counts, roles, approvers, tiers, initiator exclusion,
//! and the `Approval` token.

mod common;

use common::*;
use policy::{Decision, IgnoredReason, MissingApproval, Network};

const FEE: u64 = 1_000;

fn missing(d: &Decision) -> Vec<MissingApproval> {
    match d {
        Decision::NeedsApproval { missing, .. } => missing.clone(),
        other => panic!("expected needs_approval, got {other:?}"),
    }
}

#[test]
fn required_count_at_below_and_above() {
    let p = policy("[[scope.approvals]]\nrequired = 2");
    let v = view(vec![out(1, 10_000)], FEE);
    let one = with_approval(ctx(), "alice", "treasurer");
    let two = with_approval(one.clone(), "bob", "treasurer");
    let three = with_approval(two.clone(), "carol", "cfo");
    assert_eq!(
        missing(&p.evaluate(&v, &one)),
        [MissingApproval {
            tier_above_sats: None,
            role: None,
            count: 1
        }]
    );
    assert_approved(&p.evaluate(&v, &two));
    assert_approved(&p.evaluate(&v, &three));
    assert_eq!(
        missing(&p.evaluate(&v, &ctx())),
        [MissingApproval {
            tier_above_sats: None,
            role: None,
            count: 2
        }]
    );
}

/// A scope without tiers never reads the approvals (so the node skips looking them
/// up): the decision is the same with or without them.
#[test]
fn approvals_matter_only_where_a_tier_asks_for_them() {
    let none = policy("");
    let tiered = policy("[[scope.approvals]]\nrequired = 1\nabove_sats = 50_000");
    assert!(!none.asks_for_approvals(KEY, Network::Regtest));
    assert!(tiered.asks_for_approvals(KEY, Network::Regtest));
    assert!(!tiered.asks_for_approvals("other", Network::Regtest));
    assert!(!tiered.asks_for_approvals(KEY, Network::Bitcoin));
    let v = view(vec![out(1, 10_000)], FEE);
    let approved = with_approval(ctx(), "alice", "treasurer");
    assert_eq!(none.evaluate(&v, &ctx()), none.evaluate(&v, &approved));
    assert_approved(&none.evaluate(&v, &ctx()));
}

#[test]
fn the_same_approver_counts_once() {
    let p = policy("[[scope.approvals]]\nrequired = 2");
    let v = view(vec![out(1, 10_000)], FEE);
    let c = with_approval(with_approval(ctx(), "alice", "treasurer"), "alice", "cfo");
    assert_eq!(missing(&p.evaluate(&v, &c))[0].count, 1);
}

#[test]
fn initiator_cannot_approve_their_own_transaction() {
    let p = policy("[[scope.approvals]]\nrequired = 1");
    let v = view(vec![out(1, 10_000)], FEE);
    let c = with_approval(ctx(), "init", "treasurer");
    match p.evaluate(&v, &c) {
        Decision::NeedsApproval { missing, ignored } => {
            assert_eq!(missing[0].count, 1);
            assert_eq!(ignored.len(), 1);
            assert_eq!(ignored[0].approver, "init");
            assert_eq!(ignored[0].reason, IgnoredReason::Initiator);
        }
        other => panic!("expected needs_approval, got {other:?}"),
    }
    assert_approved(&p.evaluate(&v, &with_approval(c, "alice", "treasurer")));
}

#[test]
fn only_accepted_roles_and_listed_approvers_count() {
    let p = policy(
        "[[scope.approvals]]\nrequired = 1\nroles = [\"treasurer\"]\napprovers = [\"alice\", \"bob\"]",
    );
    let v = view(vec![out(1, 10_000)], FEE);
    let c = with_approval(
        with_approval(ctx(), "alice", "intern"),
        "mallory",
        "treasurer",
    );
    match p.evaluate(&v, &c) {
        Decision::NeedsApproval { ignored, .. } => {
            let reasons: Vec<_> = ignored
                .iter()
                .map(|i| (i.approver.as_str(), i.reason))
                .collect();
            assert_eq!(
                reasons,
                [
                    ("alice", IgnoredReason::RoleNotAccepted),
                    ("mallory", IgnoredReason::NotAnApprover)
                ]
            );
        }
        other => panic!("expected needs_approval, got {other:?}"),
    }
    assert_approved(&p.evaluate(&v, &with_approval(c, "bob", "treasurer")));
}

#[test]
fn role_minimums_need_distinct_people() {
    let p = policy(
        "[[scope.approvals]]\nrequired = 2\nroles = [\"treasurer\", \"cfo\"]\nmin_per_role = { cfo = 1 }",
    );
    let v = view(vec![out(1, 10_000)], FEE);
    // Two treasurers: total met, cfo missing.
    let c = with_approval(
        with_approval(ctx(), "alice", "treasurer"),
        "bob",
        "treasurer",
    );
    assert_eq!(
        missing(&p.evaluate(&v, &c)),
        [MissingApproval {
            tier_above_sats: None,
            role: Some("cfo".into()),
            count: 1
        }]
    );
    // One person acting in both roles is still one person.
    let c = with_approval(with_approval(ctx(), "carol", "cfo"), "carol", "treasurer");
    assert_eq!(
        missing(&p.evaluate(&v, &c)),
        [MissingApproval {
            tier_above_sats: None,
            role: None,
            count: 1
        }]
    );
    let c = with_approval(with_approval(ctx(), "alice", "treasurer"), "carol", "cfo");
    assert_approved(&p.evaluate(&v, &c));
}

#[test]
fn role_slots_use_a_maximum_matching() {
    // dave can act as cfo or treasurer; erin only as cfo. A greedy assignment that gave
    // dave the cfo slot would leave treasurer unfilled.
    let p = policy("[[scope.approvals]]\nrequired = 2\nmin_per_role = { cfo = 1, treasurer = 1 }");
    let v = view(vec![out(1, 10_000)], FEE);
    let c = with_approval(
        with_approval(with_approval(ctx(), "dave", "cfo"), "dave", "treasurer"),
        "erin",
        "cfo",
    );
    assert_approved(&p.evaluate(&v, &c));
}

#[test]
fn tier_applies_strictly_above_its_threshold() {
    let p = policy(
        "[[scope.approvals]]\nrequired = 1\n\
         [[scope.approvals]]\nabove_sats = 100_000\nrequired = 2",
    );
    let c = with_approval(ctx(), "alice", "treasurer");
    // outflow = 99_000 + 1_000 = 100_000: at the threshold, only the first tier applies
    assert_approved(&p.evaluate(&view(vec![out(1, 99_000)], FEE), &c));
    assert_approved(&p.evaluate(&view(vec![out(1, 98_999)], FEE), &c));
    let d = p.evaluate(&view(vec![out(1, 99_001)], FEE), &c);
    assert_eq!(
        missing(&d),
        [MissingApproval {
            tier_above_sats: Some(100_000),
            role: None,
            count: 1
        }]
    );
}

#[test]
fn rejection_takes_precedence_over_missing_approvals() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 5_000\n[[scope.approvals]]\nrequired = 1");
    let d = p.evaluate(&view(vec![out(1, 10_000)], FEE), &ctx());
    assert_eq!(codes(&d), ["amount_over_limit"]);
}

#[test]
fn approval_is_bound_to_policy_hash_and_view_digest() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 1_000_000");
    let v = view(vec![out(1, 10_000)], FEE);
    let approval = p
        .evaluate(&v, &ctx())
        .into_approval()
        .expect("view within limits is approved");
    assert_eq!(approval.policy_hash(), p.hash());
    assert_eq!(approval.view_digest(), v.digest());
    assert_eq!(approval.key_id(), KEY);
    assert_eq!(approval.network(), Network::Regtest);
    assert_eq!(approval.txid(), v.txid);
    assert!(approval.covers(p.hash(), &v));

    let mut other = v.clone();
    other.outputs[0].amount_sats -= 1;
    other.fee_sats += 1;
    assert!(!approval.covers(p.hash(), &other));
    let stricter = policy("[scope.limits]\nmax_per_tx_sats = 999_999");
    assert!(!approval.covers(stricter.hash(), &v));
}

/// Signing code can demand an approval by value; the type system then guarantees the
/// engine produced it.
fn sign_with(approval: policy::Approval) -> policy::ViewDigest {
    approval.view_digest()
}

#[test]
fn approval_can_be_consumed_by_signing_code() {
    let p = policy("[scope.limits]\nmax_per_tx_sats = 1_000_000");
    let v = view(vec![out(1, 10_000)], FEE);
    if let Decision::Approve(a) = p.evaluate(&v, &ctx()) {
        assert_eq!(sign_with(a), v.digest());
    } else {
        panic!("expected approval");
    }
}
