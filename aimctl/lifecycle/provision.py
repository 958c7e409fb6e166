"""``aimctl persona new NAME --pool POOL --from-gold IMAGE``: a persona's boot LUN from a gold image.

clone -> access -> done. The gold image's newest snapshot is cloned into the new persona's own
boot target; its ACL admits the persona's own initiator name only, behind a CHAP account and
secret of its own (the controller's secret store keeps it, as for every persona). The persona's
stanza (names, addresses, key reference) is worked out before anything is touched and printed for
the operator to review and commit to the definitions; then it can be started on a standby like any
persona (``aimctl persona start``).
"""

from __future__ import annotations

from aimctl.errors import OperatorError, StateMismatch
from aimctl.failover.runner import Step, StepCall, StepFailed, StepOutcome
from aimctl.lifecycle.context import LCtx

STEPS = ("clone", "access", "done")


def s_clone(lc: LCtx, call: StepCall) -> StepOutcome:
    f = call.op.facts
    snaps = lc.ctx.drivers.snapshots(str(f["storage"]))
    try:
        snaps.clone(str(f["gold_snapshot"]), str(f["target"]), int(f["lun"]), scratch=False)
    except OperatorError as exc:
        raise StepFailed(f"boot LUN not cloned from gold image {f['image']}: {exc}; nothing else was made") from None
    return StepOutcome.ok(target=f["target"], lun=f["lun"], snapshot=f["gold_snapshot"])


def s_access(lc: LCtx, call: StepCall) -> StepOutcome:
    op, f = call.op, call.op.facts
    st = lc.ctx.drivers.storage(str(f["storage"]))
    target, ini, user = str(f["target"]), str(f["initiator"]), lc.ctx.chap.user(op.persona)
    try:
        secret = lc.ctx.chap.pending(op.persona, op.id)
        st.set_chap(target, user, secret)  # CHAP first: no moment the ACL admits a login without it
        st.bind(target, ini)
        acl, account = st.initiators(target), st.chap_user(target)
        if acl != [ini] or account != user:
            raise StateMismatch(str(f["storage"]), f"{target} reads ACL {acl} and CHAP {account}")
    except OperatorError as exc:
        raise StepFailed(f"{target} was cloned but its access is not set ({exc}); it admits nobody: "
                         "fix the cause and run `aimctl persona new` again") from None
    lc.ctx.chap.commit(op.persona, op.id)
    return StepOutcome.ok(acl=acl, chap_user=account)


def s_done(lc: LCtx, call: StepCall) -> StepOutcome:
    f = call.op.facts
    return StepOutcome.ok(summary=f"{call.op.persona}: boot LUN {f['target']} from gold image {f['image']}; "
                                  "commit its stanza, then start it")


def provision_steps() -> list[Step[LCtx]]:
    fns = {"clone": s_clone, "access": s_access, "done": s_done}
    return [Step(n, fns[n]) for n in STEPS]
