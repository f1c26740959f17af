package cache

import (
	"sync"
	"time"
)

// maxNegativeEntries bounds the memory of the negative cache: about
// 100 bytes an entry.
const maxNegativeEntries = 1 << 16

// negativeCache remembers hash parts that no upstream holds, for ttl, so
// repeated misses do not each wait for the upstreams. It is safe for
// concurrent use. A ttl of zero or less disables it.
type negativeCache struct {
	ttl time.Duration

	// mu guards until.
	mu    sync.Mutex
	until map[string]time.Time
}

func (c *negativeCache) contains(hashPart string, now time.Time) bool {
	if c.ttl <= 0 {
		return false
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	expiry, ok := c.until[hashPart]
	if ok && !now.Before(expiry) {
		delete(c.until, hashPart)
		return false
	}

	return ok
}

func (c *negativeCache) add(hashPart string, now time.Time) {
	if c.ttl <= 0 {
		return
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	// Dropping everything when full is cheaper than tracking age order,
	// and costs at most one upstream request per dropped entry.
	if c.until == nil || len(c.until) >= maxNegativeEntries {
		c.until = map[string]time.Time{}
	}

	c.until[hashPart] = now.Add(c.ttl)
}

// forget removes hashPart, after the path was stored.
func (c *negativeCache) forget(hashPart string) {
	c.mu.Lock()
	defer c.mu.Unlock()

	delete(c.until, hashPart)
}
