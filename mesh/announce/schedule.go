// Package announce decides when a node publishes the provider records of
// the store paths its cache holds, so that no record expires while the
// path is still in the cache.
//
// Schedule is deterministic: it starts no goroutines and reads no clock.
// The caller passes the time to every method, announces the batches that
// Next returns, and reports each key back with Done or Failed.
package announce

import (
	"container/heap"
	"errors"
	"fmt"
	"time"
)

const (
	// DefaultBatchSize is Config.BatchSize when it is zero.
	DefaultBatchSize = 256
	// DefaultRetryDelay is Config.RetryDelay when it is zero.
	DefaultRetryDelay = time.Minute
)

// ErrInvalidConfig is wrapped by Config.Validate errors.
var ErrInvalidConfig = errors.New("invalid announce config")

// Config configures a Schedule.
type Config struct {
	// RecordLifetime is how long a provider record lives after it is
	// published, as the federation sets it for every member. Required.
	RecordLifetime time.Duration
	// Reannounce is how long after a successful announcement a key is due
	// again. It defaults to half of RecordLifetime and must be shorter
	// than RecordLifetime, because the difference is the time left to
	// re-announce before the record expires.
	Reannounce time.Duration
	// BatchSize is the largest number of keys one call of Next returns.
	// It defaults to 256.
	BatchSize int
	// RetryDelay is how long after a failed announcement a key is due
	// again. It defaults to one minute and is capped at Reannounce.
	RetryDelay time.Duration
}

// Validate checks cfg after the defaults are applied.
func (cfg Config) Validate() error {
	cfg = cfg.withDefaults()

	switch {
	case cfg.RecordLifetime <= 0:
		return fmt.Errorf("%w: RecordLifetime %s is not positive", ErrInvalidConfig, cfg.RecordLifetime)
	case cfg.Reannounce <= 0 || cfg.Reannounce >= cfg.RecordLifetime:
		return fmt.Errorf("%w: Reannounce %s must be positive and shorter than RecordLifetime %s", ErrInvalidConfig, cfg.Reannounce, cfg.RecordLifetime)
	case cfg.BatchSize < 0:
		return fmt.Errorf("%w: BatchSize %d is negative", ErrInvalidConfig, cfg.BatchSize)
	case cfg.RetryDelay < 0:
		return fmt.Errorf("%w: RetryDelay %s is negative", ErrInvalidConfig, cfg.RetryDelay)
	}

	return nil
}

func (cfg Config) withDefaults() Config {
	if cfg.Reannounce == 0 {
		cfg.Reannounce = cfg.RecordLifetime / 2
	}

	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}

	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}

	cfg.RetryDelay = min(cfg.RetryDelay, cfg.Reannounce)

	return cfg
}

// entry is one key. While it is in flight it is not in the heap and its
// index is -1.
type entry struct {
	key string
	// due is when the key should be announced next.
	due time.Time
	// deadline is when the key counts as overdue: the expiry of its last
	// record, or for a key never announced, the time it was added plus
	// the margin RecordLifetime - Reannounce.
	deadline time.Time
	// seq orders keys with the same due time by insertion.
	seq   uint64
	index int
}

// Schedule tracks when each key is due. It is not safe for concurrent
// use.
type Schedule struct {
	cfg      Config
	queue    entryHeap
	entries  map[string]*entry
	inFlight int
	seq      uint64
}

// New returns an empty Schedule. It returns an error wrapping
// ErrInvalidConfig when cfg is invalid.
func New(cfg Config) (*Schedule, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}

	return &Schedule{cfg: cfg.withDefaults(), entries: map[string]*entry{}}, nil
}

// Config returns the configuration with its defaults applied.
func (s *Schedule) Config() Config { return s.cfg }

// Len returns the number of keys, in flight or not.
func (s *Schedule) Len() int { return len(s.entries) }

// InFlight returns the number of keys that Next returned and that are not
// reported back yet.
func (s *Schedule) InFlight() int { return s.inFlight }

// Add makes key due at now. It returns false and changes nothing when the
// schedule already has key.
func (s *Schedule) Add(key string, now time.Time) bool {
	if _, ok := s.entries[key]; ok {
		return false
	}

	s.seq++
	e := &entry{key: key, due: now, deadline: now.Add(s.cfg.RecordLifetime - s.cfg.Reannounce), seq: s.seq}
	s.entries[key] = e
	heap.Push(&s.queue, e)

	return true
}

// Remove forgets key, such as a path the cache deleted. Its record stays
// on the DHT until it expires.
func (s *Schedule) Remove(key string) {
	e, ok := s.entries[key]
	if !ok {
		return
	}

	delete(s.entries, key)

	if e.index >= 0 {
		heap.Remove(&s.queue, e.index)
		return
	}

	s.inFlight--
}

// Next returns up to BatchSize keys that are due at now, the earliest due
// first, and marks them in flight: Next does not return them again until
// Done or Failed reports them.
func (s *Schedule) Next(now time.Time) []string {
	var batch []string

	for len(batch) < s.cfg.BatchSize && s.queue.Len() > 0 && !s.queue[0].due.After(now) {
		e := heap.Pop(&s.queue).(*entry)
		e.index = -1
		s.inFlight++
		batch = append(batch, e.key)
	}

	return batch
}

// NextDue returns when the earliest key not in flight is due, and false
// when there is none.
func (s *Schedule) NextDue() (time.Time, bool) {
	if s.queue.Len() == 0 {
		return time.Time{}, false
	}

	return s.queue[0].due, true
}

// Done records that key's record was published at now: it expires at now
// plus RecordLifetime and the key is due again after Reannounce. A key
// that is not in flight is ignored.
func (s *Schedule) Done(key string, now time.Time) {
	e := s.takeInFlight(key)
	if e == nil {
		return
	}

	e.deadline = now.Add(s.cfg.RecordLifetime)
	s.requeue(e, now.Add(s.cfg.Reannounce))
}

// Failed records that announcing key failed at now. The key is due again
// after RetryDelay and its deadline does not move. A key that is not in
// flight is ignored.
func (s *Schedule) Failed(key string, now time.Time) {
	e := s.takeInFlight(key)
	if e == nil {
		return
	}

	s.requeue(e, now.Add(s.cfg.RetryDelay))
}

func (s *Schedule) takeInFlight(key string) *entry {
	e, ok := s.entries[key]
	if !ok || e.index >= 0 {
		return nil
	}

	s.inFlight--

	return e
}

func (s *Schedule) requeue(e *entry, due time.Time) {
	s.seq++
	e.due = due
	e.seq = s.seq
	heap.Push(&s.queue, e)
}

// Overdue returns the number of keys whose deadline is at or before now:
// keys whose record has expired, and new keys that waited longer than
// RecordLifetime - Reannounce. A value that stays above zero means the
// node announces more slowly than its cache grows. It takes time linear
// in Len.
func (s *Schedule) Overdue(now time.Time) int {
	n := 0

	for _, e := range s.entries {
		if !e.deadline.After(now) {
			n++
		}
	}

	return n
}

// entryHeap is a min-heap of entries by due time, then insertion order.
type entryHeap []*entry

func (h entryHeap) Len() int { return len(h) }

func (h entryHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}

func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
