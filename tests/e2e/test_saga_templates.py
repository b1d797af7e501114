"""SagaTemplates and step inputs on the real stack: a template applied with kubectl, a Saga of it run by the
operator and the three participants, the purchase id that `videos` returns passed forward into the debit's
command (read back from the Kafka topic the participant reads), bad parameters and a bad reference refused
with a message naming them, and a template edited and deleted while a saga of it runs (the saga unchanged)."""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga_harness import kafka_access
from saga_harness.manifests import buy_video_saga
from saga_harness.topics import read_topic
from saga_harness.world import REPO, SagaWorld
from saga_operator.adapters.shards import Ownership
from saga_protocol import command_topic, decode_command
from saga_testenv import run_sync

pytestmark = pytest.mark.stack

Names = Callable[[str], str]
EXAMPLE = REPO / "examples" / "templates" / "buy-video.yaml"


def template(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(Path(EXAMPLE).read_text())
    body["metadata"] = {"name": name, "namespace": "default"}
    return body


def templated_saga(name: str, template_name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "saga.dev/v1alpha1",
        "kind": "Saga",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"templateRef": {"name": template_name, "parameters": parameters}},
    }


def commands_of(world: SagaWorld, participant: str, uid: str) -> list[dict[str, Any]]:
    """Every command of saga `uid` on the participant's command topic, decoded as the participant decodes it."""
    records = run_sync(read_topic(kafka_access.client_options(world.endpoints), command_topic(participant)))
    found = []
    for record in records:
        if record.key == uid.encode():
            command = decode_command(record.value, record.headers)
            found.append(json.loads(record.value))
            assert command.saga_uid == uid
    return found


def wait_for(world: SagaWorld, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(world.get(name).get("status") or {}):
            return
        time.sleep(0.1)
    raise AssertionError(f"{name}: {json.dumps(world.get(name).get('status'))}")


def test_a_templated_saga_passes_the_purchase_id_forward(world: SagaWorld, saga_name: Names) -> None:
    template_name = world.apply(template(saga_name("tpl")))
    parameters = {"buyer": "alice", "video": saga_name("v"), "price": 300, "agent": "bob-agency"}
    name = world.apply(templated_saga(saga_name("from-tpl"), template_name, parameters))
    body = world.wait_terminal([name])[name]
    status = body["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)
    assert status["template"]["name"] == template_name
    assert status["template"]["parameters"] == {**parameters, "simulate": {}}
    assert [s["name"] for s in status["template"]["steps"]] == ["record-purchase", "debit-buyer", "credit-agent"]
    records = {s["name"]: s for s in status["steps"]}
    purchase = records["record-purchase"]["result"]["purchaseId"]
    assert purchase.startswith("pur-")
    memo = f"alice buys {parameters['video']} for 300 cents"
    assert records["debit-buyer"]["input"] == {"reference": purchase, "memo": memo}
    assert records["debit-buyer"]["result"]["reference"] == purchase  # the participant read it
    assert records["credit-agent"]["input"] == {"purchase": purchase, "debit": purchase}

    # The command the users participant received: the evaluated input beside the payload it always had.
    [debit] = commands_of(world, "users", body["metadata"]["uid"])
    print("the debit command on saga.commands.users:", json.dumps(debit, indent=2))
    assert debit["input"] == {"reference": purchase, "memo": memo}
    assert debit["payload"] == {**parameters, "simulate": {}}
    assert "actionResult" not in debit


def test_a_refund_gets_the_debits_input_and_result(world: SagaWorld, saga_name: Names) -> None:
    template_name = world.apply(template(saga_name("tpl")))
    parameters = {"buyer": "alice", "video": saga_name("v"), "price": 200, "agent": "closed-agency"}
    name = world.apply(templated_saga(saga_name("refund"), template_name, parameters))
    body = world.wait_terminal([name])[name]
    status = body["status"]
    assert status["phase"] == "Compensated", json.dumps(status)
    records = {s["name"]: s for s in status["steps"]}
    purchase = records["record-purchase"]["result"]["purchaseId"]
    commands = commands_of(world, "users", body["metadata"]["uid"])
    [refund] = [c for c in commands if c["kind"] == "compensation"]
    assert refund["input"] == records["debit-buyer"]["input"]
    assert refund["actionResult"] == records["debit-buyer"]["result"]
    assert refund["actionResult"]["reference"] == purchase


def test_bad_parameters_are_refused_naming_the_parameter(world: SagaWorld, saga_name: Names) -> None:
    template_name = world.apply(template(saga_name("tpl")))
    good = {"buyer": "alice", "video": "v-1", "price": 100, "agent": "bob-agency"}
    cases = {
        saga_name("wrong-type"): ({**good, "price": "100"}, 'parameter price must be an integer, not a string: "100"'),
        saga_name("missing"): (
            {k: v for k, v in good.items() if k != "buyer"},
            f"parameter buyer is required by SagaTemplate {template_name} (it has no default): the user who pays",
        ),
        saga_name("unknown"): (
            {**good, "colour": "red"},
            f"parameter colour is not declared by SagaTemplate {template_name} "
            "(it declares: buyer, video, price, agent, simulate)",
        ),
        saga_name("no-template"): (good, "there is no SagaTemplate"),
    }
    manifests = [
        templated_saga(name, template_name if "no-template" not in name else "nothing-here", parameters)
        for name, (parameters, _) in cases.items()
    ]
    world.apply_all(manifests)
    done = world.wait_terminal(list(cases))
    print(world.kubectl("get", "sagas", "-o", "wide", *cases))
    for name, (_, message) in cases.items():
        status = done[name]["status"]
        assert status["phase"] == "Rejected"
        reason = "TemplateNotFound" if "no-template" in name else "InvalidParameters"
        assert status["reason"] == reason
        assert status["message"].startswith(f"{reason}: {message}"), status["message"]
        assert "steps" not in status or status["steps"] == []
        warnings = [e for e in world.events(name) if e["reason"] == reason]
        assert warnings and warnings[0]["type"] == "Warning" and message in warnings[0]["message"]


def test_a_reference_to_a_step_not_depended_on_is_refused(world: SagaWorld, saga_name: Names) -> None:
    saga = buy_video_saga(saga_name("bad-ref"), {"buyer": "alice", "video": "v-1", "price": 100, "agent": "bob-agency"})
    saga["metadata"]["namespace"] = "default"
    # debit-buyer runs beside record-purchase (dependsOn: []), so it cannot read its result.
    saga["spec"]["steps"][1]["dependsOn"] = []
    saga["spec"]["steps"][1]["input"] = {"reference": "${steps['record-purchase'].result.purchaseId}"}
    name = world.apply(saga)
    status = world.wait_terminal([name])[name]["status"]
    print(world.kubectl("get", "saga", name, "-o", "wide"))
    assert status["phase"] == "Rejected" and status["reason"] == "InvalidInput"
    assert status["message"] == (
        "InvalidInput: step debit-buyer: input.reference: ${steps['record-purchase'].result.purchaseId} refers to "
        "step record-purchase, which step debit-buyer does not depend on (directly or through others)"
    )
    assert all(s["attempt"] == 0 for s in status.get("steps", []))  # nothing was sent
    assert "InvalidInput" in {e["reason"] for e in world.events(name)}


def test_a_template_edited_and_deleted_while_a_saga_of_it_runs_changes_nothing(
    world: SagaWorld, saga_name: Names
) -> None:
    original = template(saga_name("tpl"))
    template_name = world.apply(original)
    parameters = {
        "buyer": "alice",
        "video": saga_name("v"),
        "price": 150,
        "agent": "bob-agency",
        "simulate": {"videos": {"delaySeconds": 3}},
    }
    name = world.apply(templated_saga(saga_name("edited"), template_name, parameters))
    wait_for(world, name, lambda s: s.get("currentStep") == "record-purchase")
    recorded = world.get(name)["status"]["template"]

    edited = copy.deepcopy(original)
    edited["spec"]["steps"] = edited["spec"]["steps"][:2]  # the credit removed
    edited["spec"]["steps"][1]["input"] = {"reference": "edited"}
    edited["spec"]["parameters"][2]["type"] = "string"
    world.apply(edited)
    world.kubectl("delete", "sagatemplate", template_name, "-n", "default")

    status = world.wait_terminal([name])[name]["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)
    assert status["template"] == recorded
    assert [s["name"] for s in status["steps"]] == ["record-purchase", "debit-buyer", "credit-agent"]
    purchase = status["steps"][0]["result"]["purchaseId"]
    assert status["steps"][1]["input"]["reference"] == purchase


def test_the_api_server_refuses_a_saga_with_both_steps_and_a_template(world: SagaWorld, saga_name: Names) -> None:
    saga = buy_video_saga(saga_name("both"), {})
    saga["metadata"]["namespace"] = "default"
    saga["spec"]["templateRef"] = {"name": "buy-video"}
    result = world.endpoints.kubectl("create", "-f", "-", input=yaml.safe_dump(saga))
    assert result.returncode != 0
    assert "a saga has either steps or a templateRef, not both and not neither" in result.stderr

    broken = template(saga_name("tpl"))
    broken["spec"]["parameters"].append({"name": "buyer", "type": "string"})
    result = world.endpoints.kubectl("create", "-f", "-", input=yaml.safe_dump(broken))
    assert result.returncode != 0 and "parameter names must be unique" in result.stderr


def template_rows(world: SagaWorld, *names: str, wide: bool = False) -> tuple[list[str], dict[str, list[str]]]:
    """`kubectl get sagatemplates` as a user reads it: the header and each row's cells, cut where the header's
    columns start (kubectl aligns every cell under its header; an empty one is blank)."""
    table = world.kubectl("get", "sagatemplates", *names, "-n", "default", *(["-o", "wide"] if wide else []))
    header, *rows = table.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    cells = {row.split()[0]: [row[a:b].strip() for a, b in bounds] for row in rows}
    return header.split(), cells


def wait_for_row(world: SagaWorld, name: str, check: Callable[[list[str]], bool], timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        row = template_rows(world, name)[1][name]
        if check(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: {row}\n{world.operator.log_tail()}")
        time.sleep(0.2)


PARAMETERS = "buyer,video,price,agent,[simulate]"


def test_kubectl_documents_and_lists_templates(world: SagaWorld, saga_name: Names) -> None:
    explained = " ".join(world.kubectl("explain", "sagatemplate.spec.parameters").split())  # kubectl wraps lines
    assert "the step inputs read it as payload.<name>" in explained
    assert "without a default the parameter is required" in explained
    status = " ".join(world.kubectl("explain", "sagatemplate.status").split())
    assert "The Sagas of this namespace whose spec.templateRef names this template" in status
    name = world.apply(template(saga_name("tpl")))
    # A new template: the operator writes its parameters and that no saga uses it yet.
    row = wait_for_row(world, name, lambda cells: cells[1:4] == [PARAMETERS, "0", "0"])
    header, _ = template_rows(world, name)
    print(world.kubectl("get", "sagatemplates", name, "-n", "default"))
    assert header == ["NAME", "PARAMETERS", "SAGAS", "RUNNING", "AGE"]
    assert row[0] == name and len(row) == 5
    wide_header, wide = template_rows(world, name, wide=True)
    assert wide_header == ["NAME", "PARAMETERS", "SAGAS", "RUNNING", "AGE", "LAST-USED", "DESCRIPTION", "PROBLEM"]
    assert wide[name][5] == ""  # no saga yet
    assert wide[name][6] == "record a video purchase, debit the buyer, credit the seller's agent"
    assert wide[name][7] == ""  # nothing a saga of it would be refused for


def test_the_sagas_of_a_template_are_counted_as_they_start_finish_and_go(world: SagaWorld, saga_name: Names) -> None:
    name = world.apply(template(saga_name("tpl")))
    wait_for_row(world, name, lambda cells: cells[2:4] == ["0", "0"])
    slow = {"videos": {"delaySeconds": 6}}
    sagas = [saga_name("counted"), saga_name("counted")]
    world.apply_all(
        templated_saga(
            saga,
            name,
            {"buyer": "alice", "video": saga_name("v"), "price": 10, "agent": "bob-agency", "simulate": slow},
        )
        for saga in sagas
    )
    own_steps = buy_video_saga(saga_name("own-steps"), {"buyer": "alice", "video": "v-1", "price": 1, "agent": "x"})
    own_steps["metadata"]["namespace"] = "default"
    world.apply(own_steps)
    # Both running (the videos step takes 6 s), then both finished; a saga of its own steps is no template's.
    running = wait_for_row(world, name, lambda cells: cells[2:4] == ["2", "2"])
    print(world.kubectl("get", "sagatemplates", name, "-n", "default"))
    assert running[1] == PARAMETERS
    world.wait_terminal(sagas)
    finished = wait_for_row(world, name, lambda cells: cells[2:4] == ["2", "0"])
    print(world.kubectl("get", "sagatemplates", name, "-n", "default", "-o", "wide"))
    assert finished[0] == name
    # Each saga of it carries the template's label: kubectl lists a template's sagas by it.
    labelled = world.kubectl("get", "sagas", "-n", "default", "-l", f"saga.dev/template={name}", "-o", "name")
    assert sorted(labelled.split()) == sorted(f"saga.saga.dev/{saga}" for saga in sagas)
    stored = json.loads(world.kubectl("get", "sagatemplate", name, "-n", "default", "-o", "json"))
    assert stored["status"]["observedGeneration"] == stored["metadata"]["generation"]
    last_used = stored["status"]["lastUsedAt"]
    assert last_used == max(world.get(saga)["metadata"]["creationTimestamp"] for saga in sagas)

    world.kubectl("delete", "saga", sagas[0], "-n", "default")
    wait_for_row(world, name, lambda cells: cells[2:4] == ["1", "0"])
    stored = json.loads(world.kubectl("get", "sagatemplate", name, "-n", "default", "-o", "json"))
    assert stored["status"]["lastUsedAt"] == last_used  # a saga deleted does not take the last use back

    # An edit of the template: its parameters column follows, at the new generation.
    edited = template(name)
    edited["spec"]["parameters"] = [p for p in edited["spec"]["parameters"] if p["name"] != "simulate"]
    world.apply(edited)
    wait_for_row(world, name, lambda cells: cells[1] == "buyer,video,price,agent")


def test_a_forged_usage_status_is_put_right_and_a_forged_template_label_replaced(
    world: SagaWorld, saga_name: Names
) -> None:
    name = world.apply(template(saga_name("tpl")))
    wait_for_row(world, name, lambda cells: cells[1:4] == [PARAMETERS, "0", "0"])
    # Anyone allowed to write sagatemplates/status writes counts of their own: the write lands, then the operator,
    # seeing a status it did not write, counts again and writes what is true.
    forged = json.dumps({"status": {"sagas": 9999, "running": 42, "parameters": "evil"}})
    patched = world.kubectl(
        "patch",
        "sagatemplate",
        name,
        "-n",
        "default",
        "--subresource=status",
        "--type=merge",
        "-p",
        forged,
        "-o",
        "json",
    )
    assert json.loads(patched)["status"]["sagas"] == 9999
    wait_for_row(world, name, lambda cells: cells[1:4] == [PARAMETERS, "0", "0"])
    # A saga created with another template's name in its label: the label names the template its spec names.
    manifest = templated_saga(
        saga_name("labelled"), name, {"buyer": "alice", "video": saga_name("v"), "price": 10, "agent": "bob-agency"}
    )
    manifest["metadata"]["labels"] = {"saga.dev/template": "someone-elses"}
    saga = world.apply(manifest)
    assert world.get(saga)["metadata"]["labels"] == {"saga.dev/template": name}
    world.wait_terminal([saga])
    wait_for_row(world, name, lambda cells: cells[2:4] == ["1", "0"])


def test_a_template_reading_a_step_it_does_not_depend_on_says_so_before_any_saga_of_it(
    world: SagaWorld, saga_name: Names
) -> None:
    broken = template(saga_name("tpl"))
    # debit-buyer runs beside record-purchase (dependsOn: []), so it cannot read its result.
    broken["spec"]["steps"][1]["dependsOn"] = []
    broken["spec"]["steps"][1]["input"] = {"reference": "${steps['record-purchase'].result.purchaseId}"}
    name = world.apply(broken)
    message = (
        "InvalidInput: step debit-buyer: input.reference: ${steps['record-purchase'].result.purchaseId} refers to "
        "step record-purchase, which step debit-buyer does not depend on (directly or through others)"
    )
    deadline = time.monotonic() + 60
    while (world_status := template_status_of(world, name)).get("problem") != message:
        assert time.monotonic() < deadline, json.dumps(world_status)
        time.sleep(0.2)
    header, rows = template_rows(world, name, wide=True)
    print(world.kubectl("get", "sagatemplates", name, "-n", "default", "-o", "wide"))
    assert header[-1] == "PROBLEM" and rows[name][-1] == message
    # A saga of it is refused at start with the same words.
    parameters = {"buyer": "alice", "video": saga_name("v"), "price": 100, "agent": "bob-agency"}
    saga = world.apply(templated_saga(saga_name("of-broken"), name, parameters))
    status = world.wait_terminal([saga])[saga]["status"]
    assert status["phase"] == "Rejected" and status["message"] == message
    # Fixed: the problem goes.
    world.apply(template(name))
    deadline = time.monotonic() + 60
    while "problem" in (world_status := template_status_of(world, name)):
        assert time.monotonic() < deadline, json.dumps(world_status)
        time.sleep(0.2)


def template_status_of(world: SagaWorld, name: str) -> dict[str, Any]:
    body = json.loads(world.kubectl("get", "sagatemplate", name, "-n", "default", "-o", "json"))
    status: dict[str, Any] = body.get("status") or {}
    return status


def test_with_two_replicas_the_counts_follow_and_survive_a_replica_killed(world: SagaWorld, saga_name: Names) -> None:
    """Each template's status is written by the replica owning its shard; killed, its templates are recounted
    by the survivor, which gains their shards."""
    shards = 3  # SAGA_TOPIC_PARTITIONS of the world's reply topics
    first = world.operator
    second = world.add_operator()
    second.start()
    try:
        deadline = time.monotonic() + 60
        while not (first.metric("saga_operator_shards_owned") and second.metric("saga_operator_shards_owned")):
            assert time.monotonic() < deadline, "both replicas own shards"
            time.sleep(0.2)
        theirs = frozenset(s for s in range(shards) if second.metric("saga_operator_shard_owned", shard=str(s)))
        # Templates until each replica owns at least one (a template's shard is its uid's).
        names: list[str] = []
        owners: set[bool] = set()
        while owners != {True, False}:
            assert len(names) < 20, "no template fell in each replica's shards"
            names.append(world.apply(template(saga_name("tpl"))))
            uid = json.loads(world.kubectl("get", "sagatemplate", names[-1], "-n", "default", "-o", "json"))
            owners.add(Ownership(shards).shard_of(uid["metadata"]["uid"]) in theirs)

        def one_saga_each() -> None:
            world.apply_all(
                templated_saga(
                    saga_name("shared"),
                    name,
                    {"buyer": "alice", "video": saga_name("v"), "price": 10, "agent": "bob-agency"},
                )
                for name in names
            )

        one_saga_each()
        for name in names:
            wait_for_row(world, name, lambda cells: cells[2:4] == ["1", "0"], timeout=90)
        second.kill()
        one_saga_each()
        for name in names:
            wait_for_row(world, name, lambda cells: cells[2:4] == ["2", "0"], timeout=120)
        print(world.kubectl("get", "sagatemplates", *names, "-n", "default"))
    finally:
        second.kill()
        world.replicas.remove(second)
