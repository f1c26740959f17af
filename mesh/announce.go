package mesh

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// AnnouncePaths adds store paths of the local cache to the announce
// schedule. New paths are due at once and re-announced every
// Config.Reannounce while the node runs. It rejects the call, adding
// nothing, when a path is not a valid store path.
func (n *Node) AnnouncePaths(storePaths ...string) error {
	hashParts := make([]string, len(storePaths))

	for i, storePath := range storePaths {
		_, base, err := narinfo.SplitStorePath(storePath)
		if err != nil {
			return fmt.Errorf("announce paths: %w", err)
		}

		hashParts[i] = narinfo.HashPart(base)
	}

	now := n.cfg.Now()
	added := 0

	n.mu.Lock()
	for _, hashPart := range hashParts {
		if n.schedule.Add(hashPart, now) {
			added++
		}
	}
	n.mu.Unlock()

	if added > 0 {
		select {
		case n.wake <- struct{}{}:
		default:
		}
	}

	return nil
}

// RemovePaths stops announcing store paths, such as paths the cache
// deleted. Their provider records stay on the DHT until they expire, and
// a peer that requests such a path gets "not found" and tries elsewhere.
func (n *Node) RemovePaths(storePaths ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()

	for _, storePath := range storePaths {
		n.schedule.Remove(narinfo.HashPart(storePath))
	}
}

// announceLoop publishes provider records for due paths with
// AnnounceConcurrency workers. It takes a batch from the schedule only
// when the workers took the previous one, so a backlog stays in the
// schedule, where Overdue counts it.
func (n *Node) announceLoop(ctx context.Context) {
	keys := make(chan string)

	var wg sync.WaitGroup
	for range n.cfg.AnnounceConcurrency {
		wg.Go(func() { n.announceWorker(ctx, keys) })
	}
	defer wg.Wait()
	defer close(keys)

	timer := time.NewTimer(0)
	defer timer.Stop()

	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-n.wake:
		}

		// Every provide fails while the routing table is empty, so wait
		// for a peer instead of spending the retries.
		if n.dht.RoutingTable().Size() == 0 {
			timer.Reset(time.Second)
			continue
		}

		now := n.cfg.Now()

		n.mu.Lock()
		batch := n.schedule.Next(now)
		next, ok := n.schedule.NextDue()
		n.mu.Unlock()

		for _, key := range batch {
			select {
			case keys <- key:
			case <-ctx.Done():
				return
			}
		}

		// Take the next batch right away while keys are due, otherwise
		// sleep until the next one is due, at most a minute, because the
		// node's clock may jump.
		wait := time.Minute
		if ok {
			wait = min(wait, max(next.Sub(n.cfg.Now()), 0))
		}

		if len(batch) == n.cfg.AnnounceBatch {
			wait = 0
		}

		timer.Reset(wait)
	}
}

func (n *Node) announceWorker(ctx context.Context, keys <-chan string) {
	for key := range keys {
		err := n.provide(ctx, key)
		now := n.cfg.Now()

		n.mu.Lock()
		if err != nil {
			n.schedule.Failed(key, now)
		} else {
			n.schedule.Done(key, now)
		}
		n.mu.Unlock()

		if err != nil {
			n.metrics.announceFails.Inc()

			if ctx.Err() == nil {
				n.logger.Debug("announcing a path failed, will retry", "hash_part", key, "error", err)
			}

			continue
		}

		n.metrics.announced.Inc()
		n.announced.Add(1)
	}
}
