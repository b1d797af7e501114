package main

// The inbox (docs/protocol.md §11.4, §11.5) and the wallet's business, in one SQLite database: the dedupe
// row and the effect commit in the same transaction.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	_ "modernc.org/sqlite" // pure Go: no cgo
)

const schema = `
CREATE TABLE IF NOT EXISTS saga_inbox (
    idempotency_key TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('action', 'compensation')),
    outcome         TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed')),  -- never 'error'
    result          TEXT,
    error_reason    TEXT,
    error_message   TEXT,
    handler         TEXT NOT NULL,
    first_command   TEXT NOT NULL,
    first_attempt   INTEGER NOT NULL,
    deliveries      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (idempotency_key, kind)
);
CREATE TABLE IF NOT EXISTS accounts (account TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS reservations (
    idempotency_key TEXT PRIMARY KEY, account TEXT NOT NULL, amount INTEGER NOT NULL, released INTEGER NOT NULL DEFAULT 0
);`

// BusinessError refuses an action: answered failed, stored, nothing applied.
type BusinessError struct{ Reason, Message string }

func (e *BusinessError) Error() string { return e.Reason + ": " + e.Message }

// Transient is an error answer: nothing stored, the operator retries.
type Transient struct{ Reason, Message string }

func (e *Transient) Error() string { return e.Reason + ": " + e.Message }

// Outcome is what the inbox decided for one delivery.
type Outcome struct {
	Outcome   string // succeeded or failed
	Result    json.RawMessage
	Error     *ErrorInfo
	Duplicate bool
}

// Handlers: an action gets the command; a compensation also gets its action's stored result.
type (
	ActionFunc       func(tx *sql.Tx, c *Command) (json.RawMessage, error)
	CompensationFunc func(tx *sql.Tx, c *Command, actionResult json.RawMessage) (json.RawMessage, error)
)

type Inbox struct {
	db            *sql.DB
	actions       map[string]ActionFunc
	compensations map[string]CompensationFunc
}

// OpenInbox opens (creates) the database: WAL, synchronous=FULL, and BEGIN IMMEDIATE for every
// transaction, so the write lock is taken before the look-up, even against another process.
func OpenInbox(path string) (*Inbox, error) {
	dsn := "file:" + path + "?_txlock=immediate&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		"&_pragma=busy_timeout(10000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1) // SQLite has one writer; transactions take turns here rather than in busy waits
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, err
	}
	return &Inbox{db: db, actions: map[string]ActionFunc{}, compensations: map[string]CompensationFunc{}}, nil
}

func (in *Inbox) Close() error { return in.db.Close() }

// Has says whether a handler of this kind and name exists (§11.2, UnknownAction).
func (in *Inbox) Has(kind, name string) bool {
	if kind == "action" {
		return in.actions[name] != nil
	}
	return in.compensations[name] != nil
}

// Apply runs the table of §11.4 in one transaction. A *Transient error means: answer error, nothing stored.
func (in *Inbox) Apply(ctx context.Context, c *Command) (out *Outcome, err error) {
	tx, err := in.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, &Transient{"DatabaseError", err.Error()}
	}
	defer func() {
		if err != nil {
			tx.Rollback()
			if _, ok := err.(*Transient); !ok {
				err = &Transient{"DatabaseError", err.Error()}
			}
			return
		}
		if cerr := tx.Commit(); cerr != nil {
			out, err = nil, &Transient{"DatabaseError", cerr.Error()}
		}
	}()
	key := c.IdempotencyKey
	if stored, handler, err := in.row(tx, key, c.Kind); err != nil || stored != nil {
		if stored != nil {
			if handler != c.Action {
				slog.Warn("replaying a row stored by another handler", "key", key, "stored", handler, "command", c.Action)
			}
			_, err = tx.Exec(`UPDATE saga_inbox SET deliveries = deliveries + 1 WHERE idempotency_key = ? AND kind = ?`, key, c.Kind)
			stored.Duplicate = true
		}
		return stored, err
	}
	other := map[string]string{"action": "compensation", "compensation": "action"}[c.Kind]
	prior, _, err := in.row(tx, key, other)
	if err != nil {
		return nil, err
	}
	if c.Kind == "action" && prior != nil { // the compensation's tombstone (or its undoing) came first
		msg := fmt.Sprintf("step %s of saga %s was compensated before this action arrived; nothing was applied", c.Step, c.SagaUID)
		return in.store(tx, c, &Outcome{Outcome: "failed", Error: &ErrorInfo{"AlreadyCompensated", msg}})
	}
	if c.Kind == "compensation" && prior == nil {
		return in.store(tx, c, &Outcome{Outcome: "succeeded", Result: json.RawMessage(`{"noop":"ActionNotApplied"}`)})
	}
	if c.Kind == "compensation" && prior.Outcome == "failed" {
		return in.store(tx, c, &Outcome{Outcome: "succeeded", Result: json.RawMessage(`{"noop":"ActionFailed"}`)})
	}
	// Run the handler in a savepoint, so that a business refusal rolls back only what it wrote.
	if _, err := tx.Exec(`SAVEPOINT handler`); err != nil {
		return nil, err
	}
	var result json.RawMessage
	if c.Kind == "action" {
		result, err = in.actions[c.Action](tx, c)
	} else {
		result, err = in.compensations[c.Action](tx, c, prior.Result)
	}
	var business *BusinessError
	if err == nil {
		if result == nil {
			result = json.RawMessage("{}")
		}
		if tooBig := checkObject(result, "result", maxResult, maxResultLvl); tooBig != nil {
			err = &BusinessError{"ResultTooLarge", tooBig.Detail}
		}
	}
	switch {
	case err == nil:
		return in.store(tx, c, &Outcome{Outcome: "succeeded", Result: result})
	case errors.As(err, &business) && c.Kind == "action":
		if _, rerr := tx.Exec(`ROLLBACK TO handler`); rerr != nil {
			return nil, rerr
		}
		return in.store(tx, c, &Outcome{Outcome: "failed", Error: &ErrorInfo{business.Reason, business.Message}})
	case errors.As(err, &business): // a compensation cannot fail: a bug, retried, nothing stored
		reason := business.Reason
		if reason != "ResultTooLarge" {
			reason = "BusinessErrorInCompensation"
		}
		return nil, &Transient{reason, business.Message}
	default:
		return nil, &Transient{"HandlerError", err.Error()}
	}
}

func (in *Inbox) row(tx *sql.Tx, key, kind string) (*Outcome, string, error) {
	var o Outcome
	var result, reason, message sql.NullString
	var handler string
	err := tx.QueryRow(`SELECT outcome, result, error_reason, error_message, handler FROM saga_inbox
	                    WHERE idempotency_key = ? AND kind = ?`, key, kind).Scan(&o.Outcome, &result, &reason, &message, &handler)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	if result.Valid {
		o.Result = json.RawMessage(result.String)
	}
	if reason.Valid {
		o.Error = &ErrorInfo{reason.String, message.String}
	}
	return &o, handler, nil
}

func (in *Inbox) store(tx *sql.Tx, c *Command, o *Outcome) (*Outcome, error) {
	var result, reason, message any
	if o.Result != nil {
		result = string(o.Result)
	}
	if o.Error != nil {
		reason, message = o.Error.Reason, o.Error.Message
	}
	_, err := tx.Exec(`INSERT INTO saga_inbox (idempotency_key, kind, outcome, result, error_reason, error_message,
	                   handler, first_command, first_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.IdempotencyKey, c.Kind, o.Outcome, result, reason, message, c.Action, c.MessageID, c.Attempt)
	return o, err
}

// The wallet: reserve {amount} for {account}; release gives it back.

func (in *Inbox) Seed(balances map[string]int64) error {
	for account, balance := range balances {
		if _, err := in.db.Exec(`INSERT OR IGNORE INTO accounts VALUES (?, ?)`, account, balance); err != nil {
			return err
		}
	}
	return nil
}

func reserve(tx *sql.Tx, c *Command) (json.RawMessage, error) {
	var p struct {
		Account string `json:"account"`
		Amount  int64  `json:"amount"`
	}
	if err := json.Unmarshal(c.Payload, &p); err != nil || p.Account == "" || p.Amount <= 0 {
		return nil, &BusinessError{"InvalidPayload", "the payload needs an account and a positive integer amount"}
	}
	var balance int64
	err := tx.QueryRow(`SELECT balance FROM accounts WHERE account = ?`, p.Account).Scan(&balance)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	if balance < p.Amount { // an unknown account has nothing
		return nil, &BusinessError{"InsufficientFunds", fmt.Sprintf("%s has %d, cannot reserve %d", p.Account, balance, p.Amount)}
	}
	if _, err := tx.Exec(`UPDATE accounts SET balance = balance - ? WHERE account = ?`, p.Amount, p.Account); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(`INSERT INTO reservations (idempotency_key, account, amount) VALUES (?, ?, ?)`,
		c.IdempotencyKey, p.Account, p.Amount); err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"account": p.Account, "reserved": p.Amount, "balance": balance - p.Amount})
}

func release(tx *sql.Tx, c *Command, _ json.RawMessage) (json.RawMessage, error) {
	var account string
	var amount int64
	err := tx.QueryRow(`SELECT account, amount FROM reservations WHERE idempotency_key = ? AND released = 0`,
		c.IdempotencyKey).Scan(&account, &amount)
	if err != nil { // the inbox calls release only after a stored reserve: a missing row is a bug, retried
		return nil, err
	}
	if _, err := tx.Exec(`UPDATE accounts SET balance = balance + ? WHERE account = ?`, amount, account); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(`UPDATE reservations SET released = 1 WHERE idempotency_key = ?`, c.IdempotencyKey); err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"account": account, "released": amount})
}
