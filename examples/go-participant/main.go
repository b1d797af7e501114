// Command go-participant is a saga participant written from docs/protocol.md alone: a tiny wallet
// (action reserve, compensation release) with its inbox in SQLite, on franz-go.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

type settings struct {
	bootstrap, name, replyTopic, database, seed, clientID string
	securityProtocol, saslMechanism, saslUser, saslPass   string
	caFile, certFile, keyFile                             string
	allowedNamespaces                                     []string
	maxInFlight                                           int
	replyTimeout                                          time.Duration
	allowFaultInjection                                   bool
}

// loadSettings: a flag wins over its environment variable (the names of docs/protocol.md §4).
func loadSettings() (*settings, error) {
	env := func(k, def string) string {
		if v, ok := os.LookupEnv(k); ok {
			return v
		}
		return def
	}
	s := &settings{}
	fs := flag.NewFlagSet("go-participant", flag.ContinueOnError)
	fs.StringVar(&s.bootstrap, "bootstrap-servers", env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), "host:port[,...]")
	fs.StringVar(&s.name, "name", env("SAGA_PARTICIPANT_NAME", "wallet"), "the participant's name (a DNS label)")
	fs.StringVar(&s.replyTopic, "reply-topic", env("SAGA_REPLY_TOPIC", ""), "the trusted reply topic (default saga.replies.<name>)")
	fs.StringVar(&s.database, "database", env("SAGA_DATABASE", "wallet.db"), "the SQLite file")
	fs.StringVar(&s.seed, "seed", env("SAGA_SEED", ""), "accounts to create if missing: alice=1000,bob=0")
	namespaces := fs.String("allowed-namespaces", env("SAGA_ALLOWED_NAMESPACES", ""), "comma-separated; empty: all")
	fs.IntVar(&s.maxInFlight, "max-in-flight", 16, "commands between fetch and finish")
	fs.DurationVar(&s.replyTimeout, "reply-timeout", 30*time.Second, "then the command is dead-lettered ReplyUndeliverable")
	fs.BoolVar(&s.allowFaultInjection, "allow-fault-injection", env("SAGA_ALLOW_FAULT_INJECTION", "") == "true",
		"obey a payload's simulateDelaySeconds (tests only)")
	fs.StringVar(&s.securityProtocol, "security-protocol", env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"), "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
	fs.StringVar(&s.saslMechanism, "sasl-mechanism", env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"), "SCRAM-SHA-512, SCRAM-SHA-256, PLAIN")
	fs.StringVar(&s.saslUser, "sasl-username", env("KAFKA_SASL_USERNAME", ""), "the principal's name")
	fs.StringVar(&s.caFile, "ssl-ca-file", env("KAFKA_SSL_CA_FILE", ""), "CA bundle of the brokers' certificates")
	fs.StringVar(&s.certFile, "ssl-cert-file", env("KAFKA_SSL_CERT_FILE", ""), "client certificate (mTLS)")
	fs.StringVar(&s.keyFile, "ssl-key-file", env("KAFKA_SSL_KEY_FILE", ""), "client key (mTLS)")
	fs.StringVar(&s.clientID, "client-id", env("KAFKA_CLIENT_ID", ""), "shown in the brokers' logs")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return nil, err
	}
	s.saslPass = os.Getenv("KAFKA_SASL_PASSWORD")
	if f := os.Getenv("KAFKA_SASL_PASSWORD_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("KAFKA_SASL_PASSWORD_FILE: %w", err)
		}
		s.saslPass = strings.TrimRight(string(b), "\r\n")
	}
	if *namespaces != "" {
		s.allowedNamespaces = strings.Split(*namespaces, ",")
	}
	if !dnsLabel.MatchString(s.name) || s.name == "dlq" {
		return nil, fmt.Errorf("name %q is not a DNS label (or is the reserved dlq)", s.name)
	}
	if s.replyTopic == "" {
		s.replyTopic = "saga.replies." + s.name
	}
	if s.clientID == "" {
		s.clientID = "saga-participant-" + s.name
	}
	return s, nil
}

func kafkaOptions(s *settings) ([]kgo.Opt, error) {
	group := "saga-participant-" + s.name
	opts := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(s.bootstrap, ",")...),
		kgo.ClientID(s.clientID),
		// producer (§3.2, §16): acks=all and idempotence are franz-go's defaults; murmur2 like Java's
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerBatchCompression(kgo.SnappyCompression()), // readers must cope with any codec (§5)
		kgo.ProducerLinger(0),
		// consumer: no auto-commit, earliest, read_committed
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics("saga.commands." + s.name),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// static membership: a restarted process takes its predecessor's place at once, and a second
		// replica (with a second inbox, which §11.6 forbids) fences the first instead of sharing the work
		kgo.InstanceID(group),
		kgo.SessionTimeout(10 * time.Second),
	}
	if strings.HasSuffix(s.securityProtocol, "SSL") {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if s.caFile != "" {
			pem, err := os.ReadFile(s.caFile)
			if err != nil {
				return nil, fmt.Errorf("KAFKA_SSL_CA_FILE: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("KAFKA_SSL_CA_FILE %s holds no certificate", s.caFile)
			}
		}
		if (s.certFile == "") != (s.keyFile == "") {
			return nil, errors.New("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together")
		}
		if s.certFile != "" {
			pair, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
			if err != nil {
				return nil, err
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if strings.HasPrefix(s.securityProtocol, "SASL_") {
		if s.saslUser == "" || s.saslPass == "" {
			return nil, errors.New("SASL needs KAFKA_SASL_USERNAME and a password")
		}
		auth := scram.Auth{User: s.saslUser, Pass: s.saslPass}
		switch s.saslMechanism {
		case "SCRAM-SHA-512":
			opts = append(opts, kgo.SASL(auth.AsSha512Mechanism()))
		case "SCRAM-SHA-256":
			opts = append(opts, kgo.SASL(auth.AsSha256Mechanism()))
		case "PLAIN":
			opts = append(opts, kgo.SASL(plain.Auth{User: s.saslUser, Pass: s.saslPass}.AsMechanism()))
		default:
			return nil, fmt.Errorf("KAFKA_SASL_MECHANISM %q is not supported", s.saslMechanism)
		}
	} else if s.securityProtocol != "PLAINTEXT" && s.securityProtocol != "SSL" {
		return nil, fmt.Errorf("KAFKA_SECURITY_PROTOCOL %q is not supported", s.securityProtocol)
	}
	return opts, nil
}

func main() {
	if err := run(); err != nil {
		slog.Error("go-participant stopped", "error", err)
		os.Exit(2)
	}
}

func run() error {
	s, err := loadSettings()
	if err != nil {
		return err
	}
	inbox, err := OpenInbox(s.database)
	if err != nil {
		return fmt.Errorf("database %s: %w", s.database, err)
	}
	defer inbox.Close()
	inbox.actions["reserve"] = reserve
	inbox.compensations["release"] = release
	if s.seed != "" {
		balances := map[string]int64{}
		for _, pair := range strings.Split(s.seed, ",") {
			account, amount, _ := strings.Cut(pair, "=")
			n, err := strconv.ParseInt(amount, 10, 64)
			if err != nil {
				return fmt.Errorf("seed %q: %w", pair, err)
			}
			balances[account] = n
		}
		if err := inbox.Seed(balances); err != nil {
			return err
		}
	}
	p := &participant{s: s, inbox: inbox, lanes: map[string]*lane{}, sem: make(chan struct{}, s.maxInFlight),
		commits: newCommits(), wake: make(chan struct{}, 1)}
	opts, err := kafkaOptions(s)
	if err != nil {
		return err
	}
	opts = append(opts, kgo.OnPartitionsRevoked(p.revoked))
	if p.cl, err = kgo.NewClient(opts...); err != nil {
		return err
	}
	defer p.cl.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	slog.Info("consuming", "topic", "saga.commands."+s.name, "replyTopic", s.replyTopic, "database", s.database)
	return p.consume(ctx)
}

type participant struct {
	s     *settings
	inbox *Inbox
	cl    *kgo.Client

	mu      sync.Mutex
	lanes   map[string]*lane // one per saga (record key): its commands one at a time, in order
	sem     chan struct{}    // bounds the commands in hand
	running sync.WaitGroup
	commits *commits
	wake    chan struct{} // a command finished: commit
}

type lane struct{ queue []*kgo.Record }

func (p *participant) consume(ctx context.Context) error {
	go p.committer(ctx)
	for ctx.Err() == nil {
		fetches := p.cl.PollFetches(ctx)
		fetches.EachError(func(topic string, part int32, err error) { p.fetchError(ctx, topic, part, err) })
		for rec := range fetches.RecordsAll() {
			select {
			case p.sem <- struct{}{}:
			case <-ctx.Done():
				break
			}
			if ctx.Err() != nil {
				break // not dispatched, not committed: redelivered to the next owner
			}
			p.commits.fetched(rec)
			p.dispatch(ctx, rec)
		}
	}
	p.running.Wait() // each in-hand command finishes (or gives up) before the last commit
	return p.commit(context.Background())
}

func (p *participant) dispatch(ctx context.Context, rec *kgo.Record) {
	key := string(rec.Key)
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.lanes[key]; l != nil {
		l.queue = append(l.queue, rec)
		return
	}
	l := &lane{queue: []*kgo.Record{rec}}
	p.lanes[key] = l
	p.running.Add(1)
	go func() {
		defer p.running.Done()
		for {
			p.mu.Lock()
			if len(l.queue) == 0 {
				delete(p.lanes, key)
				p.mu.Unlock()
				return
			}
			next := l.queue[0]
			l.queue = l.queue[1:]
			p.mu.Unlock()
			if p.handle(ctx, next) {
				p.commits.finished(next)
				select {
				case p.wake <- struct{}{}:
				default:
				}
			}
			<-p.sem
		}
	}()
}

// handle is §11 for one record; true when it was answered or dead-lettered (and may be committed).
func (p *participant) handle(ctx context.Context, rec *kgo.Record) bool {
	c, why := DecodeCommand(rec.Value, rec.Headers)
	if why == nil {
		why = p.check(c, rec)
	}
	if why != nil {
		slog.Warn("dead-lettering", "reason", why.Reason, "detail", why.Detail, "partition", rec.Partition, "offset", rec.Offset)
		if !p.produce(ctx, DeadLetter(rec, "saga.commands."+p.s.name+".dlq", p.s.name, why)) {
			return false
		}
		if c == nil || why.Reason == "UntrustedReplyTopic" {
			return true
		}
		outcome := map[string]string{"action": "failed", "compensation": "error"}[c.Kind]
		return p.reply(ctx, rec, NewReply(c, p.s.name, outcome, nil, &ErrorInfo{why.Reason, why.Detail}, false))
	}
	if d := p.simulatedDelay(c); d > 0 { // before the inbox, outside the one writer's lock
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return false
		}
	}
	var out *Outcome
	var err error
	for try := 1; ; try++ { // a few in-process retries before answering error
		if out, err = p.inbox.Apply(ctx, c); err == nil || try == 3 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(try) * 200 * time.Millisecond)
	}
	if err != nil {
		var t *Transient
		errors.As(err, &t)
		slog.Error("handler failed; answering error", "key", c.IdempotencyKey, "kind", c.Kind, "error", err)
		return p.reply(ctx, rec, NewReply(c, p.s.name, "error", nil, &ErrorInfo{t.Reason, t.Message}, false))
	}
	return p.reply(ctx, rec, NewReply(c, p.s.name, out.Outcome, out.Result, out.Error, out.Duplicate))
}

// check is §11.2, in its order.
func (p *participant) check(c *Command, rec *kgo.Record) *Refusal {
	switch {
	case c.ReplyTopic != p.s.replyTopic:
		return refuse("UntrustedReplyTopic", "replyTopic %q is not the trusted %q", c.ReplyTopic, p.s.replyTopic)
	case string(rec.Key) != c.SagaUID:
		return refuse("KeyMismatch", "the record key %q is not the sagaUid %q", rec.Key, c.SagaUID)
	case c.IdempotencyKey != c.SagaUID+"/"+c.Step:
		return refuse("IdempotencyKeyMismatch", "idempotencyKey %q is not %s/%s", c.IdempotencyKey, c.SagaUID, c.Step)
	case len(p.s.allowedNamespaces) > 0 && !slices.Contains(p.s.allowedNamespaces, c.SagaNamespace):
		return refuse("NamespaceNotAllowed", "namespace %q may not command this participant", c.SagaNamespace)
	case !p.inbox.Has(c.Kind, c.Action):
		return refuse("UnknownAction", "no %s handler named %q", c.Kind, c.Action)
	}
	return nil
}

// simulatedDelay: {"simulateDelaySeconds": S} in an action's payload, obeyed only when switched on.
func (p *participant) simulatedDelay(c *Command) time.Duration {
	var knob struct {
		Seconds float64 `json:"simulateDelaySeconds"`
	}
	if !p.s.allowFaultInjection || c.Kind != "action" || json.Unmarshal(c.Payload, &knob) != nil {
		return 0
	}
	return time.Duration(min(knob.Seconds, 60) * float64(time.Second))
}

func (p *participant) reply(ctx context.Context, cmd *kgo.Record, r *Reply) bool {
	rctx, cancel := context.WithTimeout(ctx, p.s.replyTimeout)
	defer cancel()
	if err := p.cl.ProduceSync(rctx, r.Record(p.s.replyTopic)).FirstErr(); err != nil {
		if ctx.Err() != nil {
			return false
		}
		why := refuse("ReplyUndeliverable", "the reply to %s could not be produced: %v", p.s.replyTopic, err)
		slog.Error("reply undeliverable; dead-lettering the command", "error", err)
		return p.produce(ctx, DeadLetter(cmd, "saga.commands."+p.s.name+".dlq", p.s.name, why))
	}
	return true
}

// produce waits for the broker's ack, retrying until it comes or the process stops.
func (p *participant) produce(ctx context.Context, rec *kgo.Record) bool {
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := p.cl.ProduceSync(ctx, rec).FirstErr()
		if err == nil {
			return true
		}
		slog.Error("producing failed; retrying", "topic", rec.Topic, "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
	}
}

// fetchError: a batch that does not decompress stops its partition. franz-go names the offsets only
// for one that decompresses too large; that one is dead-lettered Undecodable (value empty) and skipped.
func (p *participant) fetchError(ctx context.Context, topic string, part int32, err error) {
	var big *kgo.ErrDecompressTooLarge
	if !errors.As(err, &big) {
		if ctx.Err() == nil {
			slog.Error("fetch error", "topic", topic, "partition", part, "error", err)
		}
		return
	}
	orig := &kgo.Record{Topic: topic, Partition: part, Offset: big.Offset, Value: []byte{}}
	if p.produce(ctx, DeadLetter(orig, topic+".dlq", p.s.name, refuse("Undecodable", "%v", err))) {
		p.commits.skip(topic, part, big.NextOffset)
		p.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{topic: {part: {Epoch: big.Epoch, Offset: big.NextOffset}}})
	}
}

func (p *participant) committer(ctx context.Context) {
	for {
		select {
		case <-p.wake:
			if err := p.commit(ctx); err != nil && ctx.Err() == nil {
				slog.Warn("offset commit failed (the next one catches up)", "error", err)
			}
		case <-ctx.Done():
			return
		}
	}
}

func (p *participant) commit(ctx context.Context) error {
	offsets := p.commits.watermarks()
	if len(offsets) == 0 {
		return nil
	}
	var cerr error
	p.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		cerr = err
		for _, t := range resp.Topics {
			for _, part := range t.Partitions {
				if perr := kerr.ErrorForCode(part.ErrorCode); perr != nil && cerr == nil {
					cerr = perr
				}
			}
		}
	})
	if cerr != nil {
		p.commits.undo(offsets) // committed again by the next call
	}
	return cerr
}

// revoked: the commands in hand of lost partitions get 10 s to finish and commit (§11.6).
func (p *participant) revoked(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	deadline := time.Now().Add(10 * time.Second)
	for p.commits.busy(lost) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	p.commit(ctx)
	p.commits.forget(lost)
}
