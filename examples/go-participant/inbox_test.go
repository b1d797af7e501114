package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func openTestInbox(t *testing.T) *Inbox {
	t.Helper()
	in, err := OpenInbox(filepath.Join(t.TempDir(), "wallet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	in.actions["reserve"] = reserve
	in.compensations["release"] = release
	if err := in.Seed(map[string]int64{"alice": 1000, "dave": 0}); err != nil {
		t.Fatal(err)
	}
	return in
}

func command(saga, kind string, attempt int64, payload string) *Command {
	action := map[string]string{"action": "reserve", "compensation": "release"}[kind]
	return &Command{MessageID: saga + kind, SagaUID: saga, SagaNamespace: "shop", SagaName: "s", Step: "hold",
		Kind: kind, Action: action, Attempt: attempt, IdempotencyKey: saga + "/hold",
		Payload: json.RawMessage(payload), ReplyTopic: "saga.replies.wallet", SentAt: "2026-01-01T00:00:00Z"}
}

func apply(t *testing.T, in *Inbox, c *Command) *Outcome {
	t.Helper()
	out, err := in.Apply(context.Background(), c)
	if err != nil {
		t.Fatalf("%s: %v", c.Kind, err)
	}
	return out
}

func balance(t *testing.T, in *Inbox, account string) int64 {
	t.Helper()
	var b int64
	if err := in.db.QueryRow(`SELECT balance FROM accounts WHERE account = ?`, account).Scan(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

func rows(t *testing.T, in *Inbox) int {
	var n int
	in.db.QueryRow(`SELECT count(*) FROM saga_inbox`).Scan(&n)
	return n
}

const hundred = `{"account":"alice","amount":100}`

func TestActionAppliedOnceAndReplayed(t *testing.T) {
	in := openTestInbox(t)
	first := apply(t, in, command("s1", "action", 1, hundred))
	again := apply(t, in, command("s1", "action", 2, hundred))
	if first.Outcome != "succeeded" || first.Duplicate || !again.Duplicate || string(again.Result) != string(first.Result) {
		t.Fatalf("first %+v, again %+v", first, again)
	}
	if b := balance(t, in, "alice"); b != 900 {
		t.Fatalf("balance %d, want 900 (applied once)", b)
	}
}

func TestInsufficientFundsIsStoredAndAppliesNothing(t *testing.T) {
	in := openTestInbox(t)
	out := apply(t, in, command("s2", "action", 1, `{"account":"dave","amount":100}`))
	if out.Outcome != "failed" || out.Error.Reason != "InsufficientFunds" {
		t.Fatalf("%+v", out)
	}
	if again := apply(t, in, command("s2", "action", 2, `{"account":"dave","amount":100}`)); !again.Duplicate || again.Error.Reason != "InsufficientFunds" {
		t.Fatalf("replay %+v", again)
	}
	undo := apply(t, in, command("s2", "compensation", 1, "{}"))
	if undo.Outcome != "succeeded" || string(undo.Result) != `{"noop":"ActionFailed"}` {
		t.Fatalf("compensation %+v", undo)
	}
}

func TestCompensationReleasesOnceAndIsReplayed(t *testing.T) {
	in := openTestInbox(t)
	apply(t, in, command("s3", "action", 1, hundred))
	undo := apply(t, in, command("s3", "compensation", 1, hundred))
	again := apply(t, in, command("s3", "compensation", 2, hundred))
	if undo.Outcome != "succeeded" || undo.Duplicate || !again.Duplicate || balance(t, in, "alice") != 1000 {
		t.Fatalf("undo %+v again %+v balance %d", undo, again, balance(t, in, "alice"))
	}
	// the action redelivered after its compensation replays its own row (the row of the incoming kind wins)
	if late := apply(t, in, command("s3", "action", 1, hundred)); late.Outcome != "succeeded" || !late.Duplicate {
		t.Fatalf("late action %+v", late)
	}
}

func TestTombstoneThenStoredRefusal(t *testing.T) {
	in := openTestInbox(t)
	tomb := apply(t, in, command("s4", "compensation", 1, hundred))
	if tomb.Outcome != "succeeded" || string(tomb.Result) != `{"noop":"ActionNotApplied"}` {
		t.Fatalf("tombstone %+v", tomb)
	}
	late := apply(t, in, command("s4", "action", 1, hundred))
	replay := apply(t, in, command("s4", "action", 2, hundred))
	if late.Outcome != "failed" || late.Error.Reason != "AlreadyCompensated" || late.Duplicate {
		t.Fatalf("late %+v", late)
	}
	if !replay.Duplicate || replay.Error.Reason != "AlreadyCompensated" || balance(t, in, "alice") != 1000 {
		t.Fatalf("replay %+v", replay)
	}
}

func TestErrorStoresNothingAndRollsBack(t *testing.T) {
	in := openTestInbox(t)
	in.actions["reserve"] = func(tx *sql.Tx, c *Command) (json.RawMessage, error) {
		if _, err := reserve(tx, c); err != nil {
			return nil, err
		}
		return nil, errors.New("the dependency is down")
	}
	_, err := in.Apply(context.Background(), command("s5", "action", 1, hundred))
	var tr *Transient
	if !errors.As(err, &tr) || balance(t, in, "alice") != 1000 || rows(t, in) != 0 {
		t.Fatalf("err %v, balance %d, rows %d", err, balance(t, in, "alice"), rows(t, in))
	}
	in.actions["reserve"] = reserve // the next delivery runs the handler again
	if out := apply(t, in, command("s5", "action", 2, hundred)); out.Outcome != "succeeded" || out.Duplicate {
		t.Fatalf("%+v", out)
	}
}

func TestCompensationNeverStoresFailed(t *testing.T) {
	in := openTestInbox(t)
	apply(t, in, command("s6", "action", 1, hundred))
	in.compensations["release"] = func(*sql.Tx, *Command, json.RawMessage) (json.RawMessage, error) {
		return nil, &BusinessError{"No", "a compensation that refuses"}
	}
	_, err := in.Apply(context.Background(), command("s6", "compensation", 1, "{}"))
	var tr *Transient
	if !errors.As(err, &tr) || tr.Reason != "BusinessErrorInCompensation" || rows(t, in) != 1 {
		t.Fatalf("err %v rows %d", err, rows(t, in))
	}
}

func TestResultTooLarge(t *testing.T) {
	in := openTestInbox(t)
	big := json.RawMessage(`{"x":"` + strings.Repeat("a", maxResult) + `"}`)
	in.actions["reserve"] = func(tx *sql.Tx, c *Command) (json.RawMessage, error) {
		reserve(tx, c)
		return big, nil
	}
	out := apply(t, in, command("s7", "action", 1, hundred))
	if out.Outcome != "failed" || out.Error.Reason != "ResultTooLarge" || balance(t, in, "alice") != 1000 {
		t.Fatalf("%+v balance %d", out, balance(t, in, "alice"))
	}
	in.compensations["release"] = func(*sql.Tx, *Command, json.RawMessage) (json.RawMessage, error) { return big, nil }
	in.actions["reserve"] = reserve
	apply(t, in, command("s9", "action", 1, `{"account":"alice","amount":1}`))
	_, err := in.Apply(context.Background(), command("s9", "compensation", 1, "{}"))
	var tr *Transient
	if !errors.As(err, &tr) || tr.Reason != "ResultTooLarge" {
		t.Fatalf("compensation: %v", err)
	}
}
