"""Drive each signed checkpoint to exactly one final anchor, whatever the chain does meanwhile.

Anchoring one checkpoint is a job, kept in the ledger's SQLite file (table ``anchor_jobs``) so that
a restarted process continues it instead of starting over::

    pending ──sign, store, send──▶ sent ──in a block──▶ mined ──N blocks on top──▶ final
                                   │  ▲                  │        (receipt recorded)
              stuck: same nonce,   └──┘                  │
              fees +12.5 %              ◀── block no longer canonical (reorg)

Why each rule:

* The transaction is signed locally with an explicit nonce, and its bytes are stored *before* they
  are broadcast. After a restart, a dropped transaction or a reorganisation the same bytes are
  broadcast again; nothing is signed anew, so a crash between "sent" and "recorded" cannot pay for
  a second anchor of the same checkpoint.
* A transaction not mined after ``stuck_after_s`` is replaced with the same nonce and fees at least
  12.5 % higher (EIP-1559 nodes want +10 % on both). One nonce, so at most one of them is ever
  mined; every one is kept and looked for, so whichever is mined is the one recorded.
* The receipt goes into the ledger (``Ledger.add_anchor`` and ``<size>.anchor.json``) only when its
  block has ``confirmations`` blocks on top. Before that a block that is no longer canonical (other
  hash at that height, or the receipt gone) sends the job back to ``sent``: the same transaction is
  re-mined by the node, or broadcast again. A reorganisation deeper than that, after the receipt
  was recorded, is what ``qctrace verify`` reports (AnchorMismatch); nothing re-anchors silently.
* A nonce taken by another transaction of the account, irreversibly (``confirmations`` deep) and
  none of ours mined, means ours can never be mined: only then is the job signed again, with a new
  nonce.
* A node on another chain than ``[ledger.anchor] chain_id`` is refused before anything is signed;
  a job already sent on one chain is never continued on another.
* One process anchors for a ledger at a time: the one holding an exclusive ``flock`` on
  ``<ledger>-anchor.lock`` (the kernel drops it when that process dies). The others only queue
  jobs; several ingest workers on one ledger therefore never anchor a checkpoint twice, and never
  hand out the account's nonces twice.

:class:`AnchorDriver` is the state machine, one step at a time, for whoever holds the lock;
:class:`Anchorer` runs it in a background thread for ingest (it never raises into, nor waits on,
its caller); :func:`anchor_until_final` is the one-shot form ``qctrace anchor`` uses.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ledger.anchor import AnchorReceipt, Chain, Inclusion
from ledger.anchor_jobs import AnchorJob, AnchorLock, JobState, JobStore, read_jobs
from ledger.publish import checkpoint_payload, record_anchor
from ledger.store import Ledger
from qctrace.errors import AnchorError, AnchorMismatch, ConfigError, QctraceError

__all__ = [
    "AnchorDriver",
    "AnchorJob",
    "AnchorLock",
    "AnchorPolicy",
    "Anchorer",
    "AnchorerStatus",
    "JobState",
    "JobStore",
    "anchor_until_final",
    "backoff_delays",
    "read_jobs",
]

log = logging.getLogger(__name__)

#: Confirmations when the configuration leaves them unset: a real chain, and the in-process one
#: (which cannot reorganise, and mines the confirming block itself).
NODE_CONFIRMATIONS = 6
LOCAL_CONFIRMATIONS = 1
#: Jobs advanced per step, oldest first: bounds the transactions in flight after a long outage.
MAX_IN_FLIGHT = 16

Connect = Callable[[], Chain]


@dataclass(frozen=True, slots=True)
class AnchorPolicy:
    """How jobs are driven; :func:`policy_of` in ``qctrace.ledger_ops`` builds it from the configuration."""

    confirmations: int | None = None  # None: NODE_CONFIRMATIONS, or LOCAL_CONFIRMATIONS in-process
    expected_chain_id: int | None = None
    stuck_after_s: float = 180.0
    poll_s: float = 2.0
    retry_max_s: float = 60.0

    def confirmations_on(self, chain: Chain) -> int:
        if self.confirmations is not None:
            return self.confirmations
        return LOCAL_CONFIRMATIONS if chain.produces_own_blocks else NODE_CONFIRMATIONS


def backoff_delays(first: float, cap: float) -> Iterator[float]:
    """first, 2·first, 4·first, ... capped at ``cap``: how long to wait after each failure in a row."""
    delay = min(first, cap)
    while True:
        yield delay
        delay = min(delay * 2, cap)


def check_chain_id(chain: Chain, expected: int | None) -> None:
    if expected is not None and chain.chain_id != expected:
        raise ConfigError(
            f"the anchor node {chain.label} is chain id {chain.chain_id}, but [ledger.anchor] chain_id is"
            f" {expected}; nothing was signed or sent. Point rpc_url at a node of chain {expected}, or correct"
            " chain_id if the node is the right one"
        )


class AnchorDriver:
    """The state machine: :meth:`step` moves every unfinished job on as far as the chain allows now.

    The caller must hold the :class:`AnchorLock`. ``connect`` opens the chain; it is called again
    after any failure (a node that comes back may be another chain, so the id is checked each
    time). ``owns_chain=False`` leaves a borrowed chain open. ``clock`` is wall time (stored, and
    compared across restarts); tests pass their own to make transactions "stuck" without waiting.
    """

    def __init__(self, ledger_path: Path, checkpoint_dir: Path, connect: Connect, policy: AnchorPolicy, *,
                 owns_chain: bool = True, clock: Callable[[], float] = time.time,
                 on_change: Callable[[AnchorJob], None] | None = None) -> None:
        self.policy = policy
        self._checkpoint_dir = checkpoint_dir
        self._connect_fn = connect
        self._owns_chain = owns_chain
        self._clock = clock
        self._on_change = on_change
        self._chain: Chain | None = None
        self._payloads: dict[int, bytes] = {}
        self._led = Ledger(ledger_path)
        try:
            self.jobs = JobStore(ledger_path)
        except BaseException:
            self._led.close()
            raise

    def close(self) -> None:
        self._drop_chain()
        self.jobs.close()
        self._led.close()

    def step(self) -> bool:
        """One round over the unfinished jobs; True when any of them changed state.

        Raises AnchorError (node down, refused) or ConfigError (wrong chain, no key) after noting it
        on every unfinished job; the caller retries later.
        """
        self.jobs.add_unanchored()
        todo = self.jobs.unfinished(MAX_IN_FLIGHT)
        if not todo:
            return False
        changed = False
        try:
            chain = self._connect()
            for job in todo:
                after = self._advance(job, chain)
                changed |= after is not None and after.state is not job.state
        except (AnchorError, ConfigError) as exc:
            self._drop_chain()
            self.jobs.note_error([j.size for j in todo], str(exc))
            raise
        return changed

    # -- connection --------------------------------------------------------------------------------

    def _connect(self) -> Chain:
        if self._chain is None:
            chain = self._connect_fn()
            try:
                check_chain_id(chain, self.policy.expected_chain_id)
                _ = chain.sender  # no key: say so before anything else
            except BaseException:
                if self._owns_chain:
                    chain.close()
                raise
            self._chain = chain
        return self._chain

    def _drop_chain(self) -> None:
        if self._chain is not None and self._owns_chain:
            self._chain.close()
        self._chain = None

    # -- the states --------------------------------------------------------------------------------

    def _advance(self, job: AnchorJob, chain: Chain) -> AnchorJob | None:
        if job.chain_id is not None and job.chain_id != chain.chain_id:
            raise ConfigError(
                f"checkpoint {job.size}'s anchor transaction was sent on chain id {job.chain_id}, but {chain.label}"
                f" is chain id {chain.chain_id}; point rpc_url back at chain {job.chain_id} to finish it (nothing is"
                " sent meanwhile)"
            )
        if job.sender is not None and job.sender != chain.sender:
            raise ConfigError(
                f"checkpoint {job.size}'s anchor transaction was signed by {job.sender}, but the configured key is"
                f" {chain.sender}'s; restore that key to finish it (nothing is sent meanwhile)"
            )
        payload = self._payload(job.size)
        handler = {JobState.PENDING: self._send, JobState.SENT: self._watch_sent,
                   JobState.MINED: self._watch_mined}[job.state]
        after = handler(job, chain, payload)
        if after is None and job.error:
            after = self.jobs.save(replace(job, error=""))
        return after

    def _send(self, job: AnchorJob, chain: Chain, payload: bytes) -> AnchorJob:
        recorded = self.jobs.recorded_anchor(job.size)
        if recorded is not None:  # anchored before jobs existed, or by an older qctrace
            return self._save(replace(job, state=JobState.FINAL, error=""))
        sender = chain.sender
        nonce = max(chain.nonce("pending"), self.jobs.next_nonce(chain.chain_id, sender))
        tx = chain.sign_anchor(payload, nonce, chain.market_fees(), now=self._clock())
        # 1. the signed bytes are durable before any node has seen them
        job = self._save(replace(job, state=JobState.SENT, chain_id=chain.chain_id, sender=sender, nonce=nonce,
                                 txs=(tx,), mined=None, waiting_since=tx.signed_at, error=""))
        log.info("anchor.signed size=%d tx=%s nonce=%d", job.size, tx.tx_hash, nonce)
        # 2. then they are broadcast; a failure here leaves the job `sent`, and the next step sends them again
        chain.broadcast(tx)
        return job

    def _watch_sent(self, job: AnchorJob, chain: Chain, payload: bytes) -> AnchorJob | None:
        assert job.nonce is not None and job.txs
        head = chain.head()
        # read before the receipts: if the nonce was used irreversibly and none of ours has a receipt
        # after that, none of ours can have used it
        settled = chain.nonce(max(head - self.policy.confirmations_on(chain), 0))
        found = next((inc for tx in reversed(job.txs) if (inc := chain.inclusion(tx.tx_hash)) is not None), None)
        if found is not None and found.status == 1:
            log.info("anchor.mined size=%d tx=%s block=%d", job.size, found.tx_hash, found.block_number)
            return self._save(replace(job, state=JobState.MINED, mined=found, error=""))
        if found is not None:
            why = (f"anchor tx {found.tx_hash} failed in block {found.block_number} (status 0); signing it again with"
                   " a new nonce (check the account's balance and the node's gas rules)")
        elif settled > job.nonce:
            why = (f"nonce {job.nonce} of {job.sender} was used by another transaction (is another program sending"
                   " from this account?); signing again with a new nonce")
        else:
            return self._unstick(job, chain, payload)
        log.warning("anchor.resign size=%d reason=%s", job.size, why)
        return self._save(replace(job, state=JobState.PENDING, nonce=None, txs=(), mined=None, waiting_since=None,
                                  error=why))

    def _unstick(self, job: AnchorJob, chain: Chain, payload: bytes) -> AnchorJob | None:
        """Not mined yet: replace it when stuck, broadcast it again when the node has forgotten it."""
        assert job.nonce is not None
        newest = job.txs[-1]
        now = self._clock()
        if now - max(newest.signed_at, job.waiting_since or 0.0) >= self.policy.stuck_after_s:
            tx = chain.sign_anchor(payload, job.nonce, newest.fees.bumped(chain.market_fees()), gas=newest.gas, now=now)
            job = self._save(replace(job, txs=(*job.txs, tx), waiting_since=now, error=""))
            log.warning("anchor.replaced size=%d old=%s new=%s nonce=%d max_fee=%d tip=%d gas_price=%d", job.size,
                        newest.tx_hash, tx.tx_hash, job.nonce, tx.fees.max_fee, tx.fees.tip, tx.fees.gas_price)
            chain.broadcast(tx)
            return job
        if not chain.is_known(newest.tx_hash):  # dropped from the pool, a restarted node, or a reorg
            log.info("anchor.rebroadcast size=%d tx=%s", job.size, newest.tx_hash)
            chain.broadcast(newest)
        return None

    def _watch_mined(self, job: AnchorJob, chain: Chain, payload: bytes) -> AnchorJob | None:
        mined = job.mined
        assert mined is not None
        now_in = chain.inclusion(mined.tx_hash)
        if now_in != mined or chain.block_hash(mined.block_number) != mined.block_hash:
            return self._reorganised(job, chain, now_in)
        missing = mined.block_number + self.policy.confirmations_on(chain) - chain.head()
        if missing > 0:
            if chain.produces_own_blocks:
                chain.confirm_blocks(missing)
            return None
        receipt = chain.receipt_for(mined, payload)
        try:
            chain.verify(receipt, payload)  # what `qctrace verify` will check: bytes, sender, status, block
        except AnchorMismatch as exc:
            log.warning("anchor.not_final size=%d reason=%s", job.size, exc)
            return self._reorganised(job, chain, chain.inclusion(mined.tx_hash))
        record_anchor(self._led, self._checkpoint_dir, job.size, receipt)
        log.info("anchor.final size=%d tx=%s block=%d", job.size, receipt.tx_hash, receipt.block_number)
        return self._save(replace(job, state=JobState.FINAL, error=""))

    def _reorganised(self, job: AnchorJob, chain: Chain, now_in: Inclusion | None) -> AnchorJob:
        old = job.mined
        assert old is not None
        if now_in is not None and now_in.status == 1 and chain.block_hash(now_in.block_number) == now_in.block_hash:
            log.warning("anchor.reorg size=%d tx=%s block=%d moved_to=%d", job.size, old.tx_hash, old.block_number,
                        now_in.block_number)
            return self._save(replace(job, mined=now_in, error=""))
        log.warning("anchor.reorg size=%d tx=%s block=%d: no longer canonical; waiting for it again", job.size,
                    old.tx_hash, old.block_number)
        return self._save(replace(job, state=JobState.SENT, mined=None, waiting_since=self._clock(), error=""))

    # -- plumbing ----------------------------------------------------------------------------------

    def _save(self, job: AnchorJob) -> AnchorJob:
        job = self.jobs.save(job)
        if self._on_change is not None:
            self._on_change(job)
        return job

    def _payload(self, size: int) -> bytes:
        if size not in self._payloads:
            self._payloads[size] = checkpoint_payload(self._led, size)
        return self._payloads[size]


@dataclass(frozen=True, slots=True)
class AnchorerStatus:
    """What the background anchorer is doing, for ``qctrace status``, metrics and the dashboard."""

    role: str  # "starting", "anchoring" (holds the lock), "standby" (another process does), "stopped"
    error: str  # the last failure, "" once a step works again
    jobs: tuple[AnchorJob, ...]  # unfinished ones, oldest first

    def lines(self) -> list[str]:
        head = f"anchorer {self.role}" + (f"; error: {self.error}" if self.error else "")
        return [head, *(j.describe() for j in self.jobs)]


class Anchorer:
    """Anchors checkpoints in a background thread, so that a dead or slow node never slows ingest.

    :meth:`submit` only wakes the thread (the job itself comes from the checkpoint table, so a
    checkpoint signed just before a crash is still anchored after the restart). Failures are
    logged, shown by :meth:`status`, and retried with a capped exponential backoff; nothing is
    raised into the thread that submits.
    """

    def __init__(self, ledger_path: Path, checkpoint_dir: Path, connect: Connect, policy: AnchorPolicy, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger_path = ledger_path
        self._checkpoint_dir = checkpoint_dir
        self._connect = connect
        self.policy = policy
        self._clock = clock
        self._lock = AnchorLock(ledger_path)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = AnchorerStatus("starting", "", ())

    def start(self) -> Anchorer:
        if self._thread is not None:
            raise RuntimeError("the anchorer was already started; make a new one")
        self._thread = threading.Thread(target=self._run, name="qctrace-anchorer", daemon=True)
        self._thread.start()
        return self

    def submit(self, size: int) -> None:
        """A checkpoint of ``size`` was signed: anchor it soon. Never blocks, never raises."""
        log.debug("anchor.submitted size=%d", size)
        self._wake.set()

    def status(self) -> AnchorerStatus:
        return self._status

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current step. A step blocked on an unanswering node is left to its request
        timeout (the thread is a daemon: it does not hold the process up); its job stays stored."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("anchor.stop_timeout s=%.1f (a node request is still running)", timeout_s)

    def __enter__(self) -> Anchorer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        driver: AnchorDriver | None = None
        delays = backoff_delays(self.policy.poll_s, self.policy.retry_max_s)
        try:
            while not self._stop.is_set():
                error, changed, role = "", False, "standby"
                try:
                    if self._lock.try_acquire():
                        role = "anchoring"
                        driver = driver or AnchorDriver(self.ledger_path, self._checkpoint_dir, self._connect,
                                                        self.policy, clock=self._clock)
                        changed = driver.step()
                        jobs = tuple(driver.jobs.unfinished())
                    else:
                        jobs = tuple(j for j in read_jobs(self.ledger_path) if j.state is not JobState.FINAL)
                except (QctraceError, OSError, sqlite3.Error) as exc:
                    error, jobs = str(exc), self._status.jobs
                    log.warning("anchor.error role=%s error=%s", role, exc)
                except Exception as exc:  # a background worker must outlive one bad round
                    # Not an error we expected: log it with its traceback and keep the thread alive,
                    # because a dead anchorer would silently leave every later checkpoint unanchored.
                    log.exception("anchor.unexpected")
                    error, jobs = f"unexpected {type(exc).__name__}: {exc}", self._status.jobs
                self._status = AnchorerStatus(role, error, jobs)
                if error:
                    self._stop.wait(next(delays))  # back off: a new checkpoint does not cut the wait short
                    continue
                delays = backoff_delays(self.policy.poll_s, self.policy.retry_max_s)
                if changed:
                    continue  # the next state may be reachable at once (in-process chain: always)
                self._wake.wait(self.policy.poll_s)
                self._wake.clear()
        finally:
            if driver is not None:
                driver.close()
            self._lock.release()
            self._status = AnchorerStatus("stopped", self._status.error, self._status.jobs)


def anchor_until_final(ledger_path: Path, checkpoint_dir: Path, connect: Connect, policy: AnchorPolicy, size: int, *,
                       wait_s: float = 900.0, owns_chain: bool = True,
                       progress: Callable[[str], None] | None = None,
                       clock: Callable[[], float] = time.time) -> AnchorReceipt:
    """Queue the checkpoint of ``size`` and wait until its anchor is final; returns the recorded receipt.

    Drives the jobs itself when no other process holds the anchor lock; otherwise waits for that
    process to finish the job. Raises at once (ConfigError, AnchorError) when nothing could be sent
    (wrong chain, no key, node down): the job stays queued. Once a transaction is out, failures are
    retried until ``wait_s``; then it raises, and the job is continued - the same transaction - by
    ingest's anchorer or the next ``qctrace anchor``.
    """
    say = progress or (lambda text: log.info("anchor.progress %s", text))
    said = [""]

    def tell(text: str) -> None:
        if text != said[0]:
            said[0] = text
            say(text)

    def changed(job: AnchorJob) -> None:
        if job.size == size:
            tell(job.describe())

    lock = AnchorLock(ledger_path)
    store = JobStore(ledger_path)
    driver: AnchorDriver | None = None
    try:
        store.add([size])
        deadline = time.monotonic() + wait_s
        delays = backoff_delays(policy.poll_s, policy.retry_max_s)
        while True:
            job = store.get(size)
            assert job is not None
            if job.state is JobState.FINAL:
                receipt = store.recorded_anchor(size)
                if receipt is None:
                    raise AnchorError(f"checkpoint {size} is marked anchored but {ledger_path} holds no receipt for it;"
                                      " run `qctrace verify`")
                return receipt
            pause = policy.poll_s
            if driver is None and lock.try_acquire():
                driver = AnchorDriver(ledger_path, checkpoint_dir, connect, policy, owns_chain=owns_chain,
                                      clock=clock, on_change=changed)
            if driver is None:
                tell(f"checkpoint {size}: {lock.holder()} is anchoring this ledger; waiting ({job.status})")
            else:
                try:
                    if driver.step():
                        delays = backoff_delays(policy.poll_s, policy.retry_max_s)
                        continue
                except (AnchorError, ConfigError) as exc:
                    current = store.get(size) or job
                    if isinstance(exc, ConfigError) or current.state is JobState.PENDING:
                        raise
                    tell(f"{current.describe()}; retrying")
                    pause = next(delays)
            if time.monotonic() > deadline:
                raise AnchorError(
                    f"checkpoint {size} has no final anchor after {wait_s:g} s ({(store.get(size) or job).status});"
                    " it stays queued: ingest's anchorer, or the next `qctrace anchor`, continues the same transaction"
                )
            time.sleep(pause)
    finally:
        if driver is not None:
            driver.close()
        lock.release()
        store.close()

