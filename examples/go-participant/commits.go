package main

// Offsets to commit when commands finish out of order (docs/protocol.md §11.6): per partition, the
// lowest offset still in hand, or the one after the last fetched when none is.

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

type tp struct {
	topic string
	part  int32
}

type commits struct {
	mu      sync.Mutex
	pending map[tp]map[int64]bool // fetched, not yet answered
	next    map[tp]int64          // one past the last fetched
	done    map[tp]int64          // the last watermark committed
}

func newCommits() *commits {
	return &commits{pending: map[tp]map[int64]bool{}, next: map[tp]int64{}, done: map[tp]int64{}}
}

func (c *commits) fetched(r *kgo.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := tp{r.Topic, r.Partition}
	if c.pending[k] == nil {
		c.pending[k] = map[int64]bool{}
	}
	c.pending[k][r.Offset] = true
	c.next[k] = max(c.next[k], r.Offset+1)
}

func (c *commits) finished(r *kgo.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pending[tp{r.Topic, r.Partition}], r.Offset)
}

// skip moves past records that were never fetched (an undecodable batch).
func (c *commits) skip(topic string, part int32, to int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := tp{topic, part}
	c.next[k] = max(c.next[k], to)
}

// watermarks: what moved since the last call, as franz-go's commit map.
func (c *commits) watermarks() map[string]map[int32]kgo.EpochOffset {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[int32]kgo.EpochOffset{}
	for k, next := range c.next {
		mark := next
		for off := range c.pending[k] {
			mark = min(mark, off)
		}
		if mark == c.done[k] {
			continue
		}
		c.done[k] = mark
		if out[k.topic] == nil {
			out[k.topic] = map[int32]kgo.EpochOffset{}
		}
		out[k.topic][k.part] = kgo.EpochOffset{Epoch: -1, Offset: mark}
	}
	return out
}

func (c *commits) undo(offsets map[string]map[int32]kgo.EpochOffset) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for topic, parts := range offsets {
		for part := range parts {
			delete(c.done, tp{topic, part})
		}
	}
}

func (c *commits) busy(lost map[string][]int32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for topic, parts := range lost {
		for _, part := range parts {
			if len(c.pending[tp{topic, part}]) > 0 {
				return true
			}
		}
	}
	return false
}

func (c *commits) forget(lost map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for topic, parts := range lost {
		for _, part := range parts {
			k := tp{topic, part}
			delete(c.pending, k)
			delete(c.next, k)
			delete(c.done, k)
		}
	}
}
