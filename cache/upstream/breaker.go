package upstream

import (
	"sync"
	"time"
)

const (
	// DefaultBreakerFailures is BreakerConfig.Failures when it is zero.
	DefaultBreakerFailures = 3
	// DefaultBreakerCooldown is BreakerConfig.Cooldown when it is zero.
	DefaultBreakerCooldown = 30 * time.Second
)

// BreakerConfig configures the circuit breaker of an upstream.
type BreakerConfig struct {
	// Failures is how many failures in a row open the breaker. It
	// defaults to DefaultBreakerFailures.
	Failures int
	// Cooldown is how long an open breaker skips the upstream before it
	// lets one request through to probe it. It defaults to
	// DefaultBreakerCooldown.
	Cooldown time.Duration
}

// breaker skips an upstream after Failures failures in a row. After
// Cooldown it lets one probe request through: a success closes it and a
// failure opens it for another Cooldown. It is safe for concurrent use.
type breaker struct {
	cfg BreakerConfig
	now func() time.Time

	// mu guards the fields below.
	mu        sync.Mutex
	failures  int
	openUntil time.Time
	probing   bool
}

func newBreaker(cfg BreakerConfig, now func() time.Time) *breaker {
	if cfg.Failures <= 0 {
		cfg.Failures = DefaultBreakerFailures
	}

	if cfg.Cooldown <= 0 {
		cfg.Cooldown = DefaultBreakerCooldown
	}

	return &breaker{cfg: cfg, now: now}
}

// allow reports whether a request may go to the upstream. When it returns
// true the caller must call record with the outcome.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()

	if b.failures < b.cfg.Failures {
		return true
	}

	if b.probing || b.now().Before(b.openUntil) {
		return false
	}

	b.probing = true

	return true
}

// record counts the outcome of a request that allow let through.
func (b *breaker) record(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()

	b.probing = false

	if ok {
		b.failures = 0
		return
	}

	b.failures++
	if b.failures >= b.cfg.Failures {
		b.openUntil = b.now().Add(b.cfg.Cooldown)
	}
}

// open reports whether the breaker currently skips the upstream.
func (b *breaker) open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.failures >= b.cfg.Failures && (b.probing || b.now().Before(b.openUntil))
}
