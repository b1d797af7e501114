package main

// The decoder and the dead letters against docs/golden/, and the partitioner against §3.1's vectors.

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

type goldenRecord struct {
	Topic     string      `json:"topic"`
	Partition int32       `json:"partition"`
	Offset    int64       `json:"offset"`
	Key       *string     `json:"key"`
	Headers   [][]*string `json:"headers"`
	Value     *struct {
		UTF8   *string `json:"utf8"`
		Base64 *string `json:"base64"`
		SameAs *string `json:"sameAs"` // a dead letter's value: "record", the original's
	} `json:"value"`
}

func (g *goldenRecord) record(t *testing.T) *kgo.Record {
	r := &kgo.Record{Topic: g.Topic, Partition: g.Partition, Offset: g.Offset}
	if g.Key != nil {
		r.Key = []byte(*g.Key)
	}
	for _, h := range g.Headers {
		var v []byte
		if h[1] != nil {
			v = []byte(*h[1])
		}
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: *h[0], Value: v})
	}
	switch {
	case g.Value == nil:
	case g.Value.UTF8 != nil:
		r.Value = []byte(*g.Value.UTF8)
	case g.Value.Base64 != nil:
		b, err := base64.StdEncoding.DecodeString(*g.Value.Base64)
		if err != nil {
			t.Fatal(err)
		}
		r.Value = b
	}
	return r
}

func TestGoldenCommands(t *testing.T) {
	files, _ := filepath.Glob("../../docs/golden/command-*.json")
	more, _ := filepath.Glob("../../docs/golden/dlq-command-*.json")
	files = append(files, more...)
	if len(files) == 0 {
		t.Skip("docs/golden is not beside this module")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var g struct {
				Participant *struct {
					Name              string   `json:"name"`
					TrustedReplyTopic string   `json:"trustedReplyTopic"`
					AllowedNamespaces []string `json:"allowedNamespaces"`
				} `json:"participant"`
				Record goldenRecord `json:"record"`
				Expect struct {
					DecodesAs string `json:"decodesAs"`
					Reason    string `json:"reason"`
				} `json:"expect"`
				DeadLetter *goldenRecord `json:"deadLetter"`
				Reply      *goldenRecord `json:"reply"`
			}
			raw, _ := os.ReadFile(f)
			if err := json.Unmarshal(raw, &g); err != nil {
				t.Fatal(err)
			}
			if g.Expect.Reason == "Undecodable" {
				t.Skip("a batch that does not decompress never reaches the decoder")
			}
			rec := g.Record.record(t)
			c, why := DecodeCommand(rec.Value, rec.Headers)
			if why == nil && g.Participant != nil {
				p := &participant{s: &settings{name: g.Participant.Name, replyTopic: g.Participant.TrustedReplyTopic,
					allowedNamespaces: g.Participant.AllowedNamespaces}, inbox: &Inbox{
					actions: map[string]ActionFunc{"debit": reserve}, compensations: map[string]CompensationFunc{"refund": release}}}
				why = p.check(c, rec)
			}
			if g.Expect.DecodesAs == "command" {
				if why != nil {
					t.Fatalf("refused %v", why)
				}
				return
			}
			if why == nil || why.Reason != g.Expect.Reason {
				t.Fatalf("got %v, want %s", why, g.Expect.Reason)
			}
			dl := DeadLetter(rec, g.DeadLetter.Topic, g.Participant.Name, why)
			want := g.DeadLetter.record(t)
			if g.DeadLetter.Value != nil && g.DeadLetter.Value.SameAs != nil {
				want.Value = rec.Value
				if want.Value == nil {
					want.Value = []byte{}
				}
			}
			if string(dl.Key) != string(want.Key) || string(dl.Value) != string(want.Value) || len(dl.Headers) != len(want.Headers) {
				t.Fatalf("dead letter: key %q, %d value bytes, %d headers; want %q, %d, %d",
					dl.Key, len(dl.Value), len(dl.Headers), want.Key, len(want.Value), len(want.Headers))
			}
			for i, h := range want.Headers {
				same := dl.Headers[i].Key == h.Key && (h.Key == "dlq_detail" || h.Key == "dlq_time" || string(dl.Headers[i].Value) == string(h.Value))
				if !same || (h.Value == nil) != (dl.Headers[i].Value == nil) {
					t.Fatalf("header %d: %s=%q, want %s=%q", i, dl.Headers[i].Key, dl.Headers[i].Value, h.Key, h.Value)
				}
			}
			if (g.Reply != nil) != (c != nil && why.Reason != "UntrustedReplyTopic") {
				t.Fatalf("answered: %v, golden: %v", c != nil, g.Reply != nil)
			}
		})
	}
}

func TestDecoderRefusals(t *testing.T) {
	golden, _ := os.ReadFile("../../docs/golden/command-action.json")
	var g struct {
		Record struct {
			Body map[string]any `json:"body"`
		} `json:"record"`
	}
	if json.Unmarshal(golden, &g) != nil {
		t.Skip("docs/golden is not beside this module")
	}
	with := func(k string, v any) []byte {
		b := map[string]any{}
		for key, val := range g.Record.Body {
			b[key] = val
		}
		if v == nil {
			delete(b, k)
		} else {
			b[k] = v
		}
		out, _ := json.Marshal(b)
		return out
	}
	cases := map[string]struct {
		value  []byte
		reason string
	}{
		"attempt as a string":   {with("attempt", "1"), "SchemaViolation"},
		"attempt as 1.0":        {[]byte(`{"attempt":1.0}`), "SchemaViolation"},
		"null field":            {with("sagaUid", json.RawMessage("null")), "SchemaViolation"},
		"repeated key":          {[]byte(`{"a":1,"a":2}`), "NotJson"},
		"NaN":                   {[]byte(`{"a":NaN}`), "NotJson"},
		"trailing bytes":        {[]byte(`{} {}`), "NotJson"},
		"an array":              {[]byte(`[1]`), "NotAnObject"},
		"time without offset":   {with("sentAt", "2026-01-01T00:00:00"), "SchemaViolation"},
		"wrong-case field name": {with("sagaUid", nil), "SchemaViolation"},
		"payload not an object": {with("payload", []int{1}), "SchemaViolation"},
	}
	for name, tc := range cases {
		if _, why := DecodeCommand(tc.value, nil); why == nil || why.Reason != tc.reason {
			t.Errorf("%s: got %v, want %s", name, why, tc.reason)
		}
	}
	odd := with("SAGAUID", "x") // an unknown field, ignored, not taken for sagaUid
	if c, why := DecodeCommand(odd, nil); why != nil || c.SagaUID != g.Record.Body["sagaUid"] {
		t.Errorf("unknown field: %v %v", c, why)
	}
	if c, why := DecodeCommand(with("sentAt", "2026-01-01T01:00:00.123456789+01:00"), nil); why != nil || c == nil {
		t.Errorf("an offset and nanoseconds: %v", why)
	}
}

func TestPartitionerMatchesKafka(t *testing.T) {
	p := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	for key, want := range map[string]int{"21": 0, "foobar": 0, "saga-1": 1, "saga-3": 2, "saga-4": 3, "saga-6": 4,
		"0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44": 0} {
		if got := p.Partition(&kgo.Record{Key: []byte(key)}, 6); got != want {
			t.Errorf("%s: partition %d, want %d", key, got, want)
		}
	}
}
