package main

// The wire format of protocol v2 (docs/protocol.md §5 to §10, §13): decoding a command, building a
// reply, the CloudEvents headers and the dead-letter header set.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	commandType   = "dev.saga.command.v2"
	replyType     = "dev.saga.reply.v2"
	maxValue      = 256 * 1024 // §9
	maxBodyDepth  = 64
	maxPayload    = 64 * 1024
	maxPayloadLvl = 32
	maxResult     = 16 * 1024
	maxResultLvl  = 32
	maxDetail     = 4096
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Command is §6. Decoding into typed fields refuses wrong JSON types (a "1" or 1.0 attempt).
type Command struct {
	MessageID      string          `json:"messageId"`
	SagaUID        string          `json:"sagaUid"`
	SagaNamespace  string          `json:"sagaNamespace"`
	SagaName       string          `json:"sagaName"`
	Step           string          `json:"step"`
	Kind           string          `json:"kind"`
	Action         string          `json:"action"`
	Attempt        int64           `json:"attempt"`
	IdempotencyKey string          `json:"idempotencyKey"`
	Payload        json.RawMessage `json:"payload"`
	ReplyTopic     string          `json:"replyTopic"`
	SentAt         string          `json:"sentAt"`
}

// ErrorInfo is a reply's `error`.
type ErrorInfo struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Reply is §7; field order follows the golden messages.
type Reply struct {
	MessageID      string          `json:"messageId"`
	CommandID      string          `json:"commandId"`
	SagaUID        string          `json:"sagaUid"`
	Step           string          `json:"step"`
	Kind           string          `json:"kind"`
	Attempt        int64           `json:"attempt"`
	IdempotencyKey string          `json:"idempotencyKey"`
	Participant    string          `json:"participant"`
	Outcome        string          `json:"outcome"`
	Result         json.RawMessage `json:"result,omitempty"`
	Error          *ErrorInfo      `json:"error,omitempty"`
	Duplicate      bool            `json:"duplicate"`
	SentAt         string          `json:"sentAt"`
}

// Refusal is a reason code (§14) with its detail.
type Refusal struct{ Reason, Detail string }

func (r *Refusal) Error() string { return r.Reason + ": " + r.Detail }

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{reason, fmt.Sprintf(format, args...)}
}

// DecodeCommand applies §10 in its order; the first failing check names the reason.
func DecodeCommand(value []byte, headers []kgo.RecordHeader) (*Command, *Refusal) {
	if len(value) == 0 {
		return nil, refuse("EmptyMessage", "the value is null or empty")
	}
	if len(value) > maxValue {
		return nil, refuse("Oversized", "the value is %d bytes, over %d", len(value), maxValue)
	}
	for _, h := range headers {
		if h.Key == "ce_type" && (h.Value == nil || string(h.Value) != commandType) {
			return nil, refuse("WrongType", "ce_type is %q, expected %s", h.Value, commandType)
		}
	}
	if !utf8.Valid(value) {
		return nil, refuse("NotJson", "the value is not UTF-8")
	}
	if !json.Valid(value) { // also NaN, Infinity, trailing bytes
		return nil, refuse("NotJson", "the value is not one JSON text")
	}
	depth, err := jsonDepth(value)
	if err != nil {
		return nil, refuse("NotJson", "%v", err)
	}
	if bytes.TrimSpace(value)[0] != '{' {
		return nil, refuse("NotAnObject", "the value is JSON but not an object")
	}
	if depth > maxBodyDepth {
		return nil, refuse("TooDeep", "the body nests %d levels, over %d", depth, maxBodyDepth)
	}
	// Field by field with exact names: encoding/json alone would match "SAGAUID" to sagaUid.
	var body map[string]json.RawMessage
	if err := json.Unmarshal(value, &body); err != nil {
		return nil, refuse("NotJson", "%v", err)
	}
	var c Command
	c.Payload = body["payload"]
	for name, into := range map[string]any{
		"messageId": &c.MessageID, "sagaUid": &c.SagaUID, "sagaNamespace": &c.SagaNamespace,
		"sagaName": &c.SagaName, "step": &c.Step, "kind": &c.Kind, "action": &c.Action, "attempt": &c.Attempt,
		"idempotencyKey": &c.IdempotencyKey, "replyTopic": &c.ReplyTopic, "sentAt": &c.SentAt,
	} {
		if raw, ok := body[name]; ok {
			if err := json.Unmarshal(raw, into); err != nil || string(raw) == "null" {
				return nil, refuse("SchemaViolation", "%s: %s is not of its type", name, raw)
			}
		}
	}
	if len(c.Payload) == 0 {
		c.Payload = json.RawMessage("{}")
	}
	if r := checkObject(c.Payload, "payload", maxPayload, maxPayloadLvl); r != nil {
		return nil, r
	}
	if r := c.validate(); r != nil {
		return nil, r
	}
	return &c, nil
}

// checkObject enforces §9 on a payload or a result: an object, its compact size and its depth.
func checkObject(raw json.RawMessage, what string, maxSize, maxDepth int) *Refusal {
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		return refuse("SchemaViolation", "%s is not an object", what)
	}
	if d, _ := jsonDepth(raw); d > maxDepth {
		return refuse("TooDeep", "%s nests %d levels, over %d", what, d, maxDepth)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil || buf.Len() > maxSize {
		return refuse("Oversized", "%s is %d bytes, over %d", what, buf.Len(), maxSize)
	}
	return nil
}

func (c *Command) validate() *Refusal {
	str := func(field, v string, lo, hi int) *Refusal {
		if n := utf8.RuneCountInString(v); n < lo || n > hi {
			return refuse("SchemaViolation", "%s: length %d not in %d..%d (missing?)", field, n, lo, hi)
		}
		return nil
	}
	for _, r := range []*Refusal{
		str("messageId", c.MessageID, 1, 64), str("sagaUid", c.SagaUID, 1, 64),
		str("sagaNamespace", c.SagaNamespace, 1, 63), str("sagaName", c.SagaName, 1, 253),
		str("action", c.Action, 1, 128), str("idempotencyKey", c.IdempotencyKey, 1, 320),
		str("replyTopic", c.ReplyTopic, 1, 249),
	} {
		if r != nil {
			return r
		}
	}
	if !dnsLabel.MatchString(c.Step) {
		return refuse("SchemaViolation", "step %q is not a DNS label", c.Step)
	}
	if c.Kind != "action" && c.Kind != "compensation" {
		return refuse("SchemaViolation", "kind %q is not action or compensation", c.Kind)
	}
	if c.Attempt < 1 {
		return refuse("SchemaViolation", "attempt must be an integer >= 1")
	}
	if _, err := time.Parse(time.RFC3339Nano, c.SentAt); err != nil {
		return refuse("SchemaViolation", "sentAt %q is not RFC 3339 with an offset", c.SentAt)
	}
	return nil
}

// jsonDepth walks valid JSON: the deepest nesting of containers, and an error for a repeated key.
func jsonDepth(value []byte) (int, error) {
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	type frame struct {
		object bool
		keys   map[string]bool
		keyNow bool // the next token of this object is a key
	}
	var stack []*frame
	deepest := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return deepest, nil // io.EOF: json.Valid already vouched for the text
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].keyNow = true
			}
			continue
		}
		if top != nil && top.object && top.keyNow {
			key := tok.(string)
			if top.keys[key] {
				return deepest, fmt.Errorf("repeated key %q", key)
			}
			top.keys[key] = true
			top.keyNow = false
			continue
		}
		if d, ok := tok.(json.Delim); ok {
			stack = append(stack, &frame{object: d == '{', keys: map[string]bool{}, keyNow: d == '{'})
			deepest = max(deepest, len(stack))
			continue
		}
		if top != nil && top.object {
			top.keyNow = true
		}
	}
}

// NewReply is §7's builder: the echoed fields come from this delivery.
func NewReply(c *Command, participant, outcome string, result json.RawMessage, e *ErrorInfo, duplicate bool) *Reply {
	if outcome == "succeeded" && result == nil {
		result = json.RawMessage("{}")
	}
	if e != nil && utf8.RuneCountInString(e.Message) > maxDetail {
		e = &ErrorInfo{e.Reason, string([]rune(e.Message)[:maxDetail])}
	}
	return &Reply{
		MessageID: uuid.NewString(), CommandID: c.MessageID, SagaUID: c.SagaUID, Step: c.Step, Kind: c.Kind,
		Attempt: c.Attempt, IdempotencyKey: c.IdempotencyKey, Participant: participant, Outcome: outcome,
		Result: result, Error: e, Duplicate: duplicate, SentAt: time.Now().UTC().Format(time.RFC3339Nano),
	}
}

// Record is the reply as a Kafka record (§5): keyed by sagaUid, the seven CloudEvents headers.
func (r *Reply) Record(topic string) *kgo.Record {
	value, _ := json.Marshal(r)
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	return &kgo.Record{Topic: topic, Key: []byte(r.SagaUID), Value: value, Headers: []kgo.RecordHeader{
		h("ce_specversion", "1.0"), h("ce_id", r.MessageID), h("ce_source", "/participants/"+r.Participant),
		h("ce_type", replyType), h("ce_subject", r.Step), h("ce_time", r.SentAt),
		h("content-type", "application/json"),
	}}
}

// DeadLetter is §13: the original key and value, the dlq_* headers in order, then the original headers.
func DeadLetter(orig *kgo.Record, topic, source string, why *Refusal) *kgo.Record {
	detail := why.Detail
	if utf8.RuneCountInString(detail) > maxDetail {
		detail = string([]rune(detail)[:maxDetail])
	}
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	headers := []kgo.RecordHeader{
		h("dlq_reason", why.Reason), h("dlq_detail", detail), h("dlq_source", source),
		h("dlq_topic", orig.Topic), h("dlq_partition", strconv.Itoa(int(orig.Partition))),
		h("dlq_offset", strconv.FormatInt(orig.Offset, 10)),
		h("dlq_time", time.Now().UTC().Format("2006-01-02T15:04:05.000Z")),
	}
	headers = append(headers, orig.Headers...)
	value := orig.Value
	if value == nil {
		value = []byte{}
	}
	const keep = 512 * 1024
	if len(value) > keep { // cannot happen with franz-go's default 1 MB fetch cap; kept for the rule
		value = value[:keep]
		headers = append(headers, h("dlq_truncated", "true"))
	}
	return &kgo.Record{Topic: topic, Key: orig.Key, Value: value, Headers: headers}
}
