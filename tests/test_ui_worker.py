"""The UI's model worker: requests take turns on one thread, a cancelled one never runs, failures become one line.

No browser and no model: the jobs here are plain functions (and a child process that dies at once), so what is
tested is the queue itself.
"""

import multiprocessing
import os
import threading
import time

from glance_lite.errors import UserError
from glance_lite.ui import training
from glance_lite.ui.worker import CANCELLED, DONE, FAILED, Job, Worker


def test_a_second_request_waits_its_turn_and_knows_how_many_are_ahead():
    worker = Worker()
    started, release, order = threading.Event(), threading.Event(), []

    def first(job):
        order.append("first starts")
        started.set()
        release.wait(10)
        order.append("first ends")
        return 1

    running = worker.submit("generate", first)
    second = worker.submit("generate", lambda job: order.append("second runs") or 2)
    assert started.wait(10), "the worker never started the first request"
    assert running.state == "running" and worker.jobs_ahead(second) == 1 and not second.finished
    release.set()
    assert second.wait(10) and running.wait(10)
    assert order == ["first starts", "first ends", "second runs"]
    assert (running.state, running.result, second.state, second.result) == (DONE, 1, DONE, 2)


def test_a_request_cancelled_while_waiting_never_runs_and_the_worker_goes_on():
    worker = Worker()
    release, ran = threading.Event(), []
    blocker = worker.submit("train", lambda job: release.wait(10))
    cancelled = worker.submit("generate", lambda job: ran.append("cancelled one"))
    after = worker.submit("generate", lambda job: ran.append("next one"))
    cancelled.cancel()
    release.set()
    assert after.wait(10) and blocker.wait(10)
    assert cancelled.state == CANCELLED and ran == ["next one"]


def test_a_failing_request_reports_its_message_and_the_worker_survives():
    worker = Worker()

    def refuse(job):
        raise UserError("height=60 is not a multiple of 16")  # a user's mistake, as the library raises it

    failed = worker.submit("generate", refuse)
    fine = worker.submit("generate", lambda job: "ok")
    assert fine.wait(10) and failed.wait(10)
    assert (failed.state, failed.error) == (FAILED, "height=60 is not a multiple of 16")
    assert (fine.state, fine.result) == (DONE, "ok")


def test_an_internal_failure_is_not_passed_off_as_the_users_mistake():
    """The page draws the line where the command lines do (`cli.is_user_error`): a torch RuntimeError is a bug."""
    worker = Worker()

    def crash(job):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    failed = worker.submit("generate", crash)
    assert failed.wait(10) and failed.state == FAILED
    assert failed.error.startswith("Unexpected error (RuntimeError: CUDA error") and "server log" in failed.error


def test_a_training_process_that_dies_without_a_word_fails_its_request_instead_of_hanging_the_worker(tmp_path):
    """A training child killed by the system (out of memory, kill -9) sends no result: the worker must see its end."""
    context = multiprocessing.get_context("fork")  # the child only exits: nothing of this process is used in it
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=os._exit, args=(9,))
    child.start()
    send.close()
    outcome = []

    def follow():  # what the worker does while a training request runs
        outcome.append(training._follow(child, receive, Job("train", None), tmp_path, time.time()))

    follower = threading.Thread(target=follow, daemon=True)  # daemon: a follower that hangs cannot hang the test run
    follower.start()
    follower.join(30)
    assert outcome, "the worker still waits for a training process that ended"
    assert outcome[0][0] == "failed" and "ended without a result (exit code 9)" in outcome[0][1]
