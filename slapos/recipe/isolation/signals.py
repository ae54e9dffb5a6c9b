# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Signals of a run, in isolate-exec and in the supervisor alike: SIGINT,
SIGTERM and SIGHUP forwarded to one process (the supervisor, then the
command), --timeout, and stopping the command (SIGTERM, SIGKILL after the
kill timeout).

The only module with process-wide state (the signal handlers' own); others
read it through the functions below. Imports common.
"""
import os
try:
    import _signal as signal  # Python 3: `import signal` pulls in enum (~3 ms)
except ImportError:  # Python 2
    import signal

from slapos.recipe.isolation.common import now

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_forward_to = None      # pid the forwarded signals go to
_pending_signal = None  # a signal received before there was anyone to forward it to
_orphaned = None        # fallback supervisor: (parent pid, kill timeout)
_stopping = None        # the command is being stopped: [kill timeout, signals sent]


def _forward_signal(signum, frame):
    global _pending_signal
    if _orphaned is not None and os.getppid() != _orphaned[0]:
        # isolate-exec is gone (PR_SET_PDEATHSIG): this SIGTERM goes to the
        # command; SIGKILL follows after the kill timeout, and the supervisor
        # cleans up as usual
        stop_command(_orphaned[1], sent=[signal.SIGTERM])
    if _forward_to is None:
        _pending_signal = signum
        return
    try:
        os.kill(_forward_to, signum)
    except OSError:
        pass


def stop_command(kill_timeout, sent=None):
    """Stop the command: SIGTERM now (unless already sent), SIGKILL after
    kill_timeout (a SIGALRM timer, so that waiting for it goes on)."""
    global _stopping
    if _stopping is not None:
        return
    _stopping = [kill_timeout, list(sent or ())]
    signal.signal(signal.SIGALRM, _on_alarm)
    if not sent:
        _next_step()
    else:
        _arm(kill_timeout)


# When the timer is due (now()'s clock). A SIGALRM may come from anyone who
# may signal us (the test may signal pid 1, the supervisor): one that comes
# before the deadline only re-arms the timer for what is left.
_alarm_at = None


def _arm(seconds):
    global _alarm_at
    seconds = max(seconds, 0.001)
    _alarm_at = now() + seconds
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _on_alarm(signum, frame):
    """SIGALRM: the next step of --timeout and stop_command(), once due."""
    global _alarm_at
    if _alarm_at is None:  # not armed: not ours
        return
    left = _alarm_at - now()
    if left > 0.0005:
        signal.setitimer(signal.ITIMER_REAL, left)
        return
    _alarm_at = None
    _next_step()


def _next_step():
    """--timeout's timer: the next step of stop_command()."""
    if _stopping is None:  # the timeout itself
        return stop_command(_timeout[1])
    kill_timeout, sent = _stopping
    signum = signal.SIGKILL if signal.SIGTERM in sent else signal.SIGTERM
    sent.append(signum)
    if _forward_to is not None:
        try:
            os.kill(_forward_to, signum)
        except OSError:
            pass
    if signum == signal.SIGTERM:
        _arm(kill_timeout)


_timeout = (None, None)  # (seconds, kill timeout) of --timeout


def ignore_stray_alarms():
    """The supervisor's SIGALRM handler from its start: a SIGALRM the test
    sends before there is any timer must not kill it (the default action)."""
    signal.signal(signal.SIGALRM, _on_alarm)


def arm_timeout(seconds, kill_timeout):
    """--timeout: stop_command() after seconds."""
    global _timeout
    _timeout = (seconds, kill_timeout)
    signal.signal(signal.SIGALRM, _on_alarm)
    _arm(seconds)


def disarm_timeout():
    global _alarm_at
    _alarm_at = None
    signal.setitimer(signal.ITIMER_REAL, 0)


def timed_out():
    """-> (seconds, [signals sent]) when --timeout stopped the command, else None"""
    if _timeout[0] is not None and _stopping is not None:
        return _timeout[0], list(_stopping[1])
    return None


def pending_signal():
    """-> the signal received before there was a command to forward it to, or None"""
    return _pending_signal


def stop_when_orphaned(parent, kill_timeout):
    """Fallback supervisor: a forwarded signal that arrives once parent (isolate-exec) is
    gone stops the command, SIGKILL following after kill_timeout."""
    global _orphaned
    _orphaned = (parent, kill_timeout)


def forward_signals_to(pid):
    """Send SIGINT, SIGTERM and SIGHUP to pid from now on, including one that
    arrived before (pid None: remember them)."""
    global _forward_to, _pending_signal
    _forward_to = pid
    if pid is not None and _pending_signal is not None:
        _forward_signal(_pending_signal, None)
        _pending_signal = None


def install_signal_forwarding(undo):
    """Install the forwarding handlers, before any child exists: a pid-1
    supervisor receives only signals it has a handler for. Signals ignored by
    our caller (nohup) stay ignored, for us and the command. SIGCHLD ignored
    by the caller would make the kernel reap our children itself (waitpid
    fails with ECHILD): it gets its default."""
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        undo.register(signal.signal, signal.SIGCHLD, signal.SIG_IGN)
    for signum in FORWARDED_SIGNALS:
        previous = signal.getsignal(signum)
        if previous != signal.SIG_IGN:
            signal.signal(signum, _forward_signal)
            undo.register(signal.signal, signum, previous)
