package scheduler

import "hash/fnv"

// sketchSize is the number of hashes a sketch keeps. The estimate's
// relative standard error is about 1/sqrt(sketchSize-2), so 25% at 16.
const sketchSize = 16

// sketch is a bottom-k sketch of a set of derivations: the sketchSize
// smallest hashes of its members, ascending. Merging two sketches gives the
// sketch of the union, which lets a derivation estimate its number of
// transitive dependents from those of its direct dependents without
// storing the sets. Sets smaller than sketchSize are counted exactly.
type sketch struct {
	n      int
	hashes [sketchSize]uint64
}

// hashPath maps a derivation path to a uniformly distributed 64-bit value.
func hashPath(path string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	x := h.Sum64()

	// FNV alone is not uniform enough in its high bits for short keys, so
	// mix it with the splitmix64 finalizer.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// add inserts one hash and reports whether the sketch changed.
func (s *sketch) add(h uint64) bool {
	i := 0
	for i < s.n && s.hashes[i] < h {
		i++
	}
	if i < s.n && s.hashes[i] == h {
		return false
	}
	if i == sketchSize {
		return false
	}
	if s.n < sketchSize {
		s.n++
	}
	copy(s.hashes[i+1:s.n], s.hashes[i:s.n-1])
	s.hashes[i] = h
	return true
}

// merge adds every hash of o and reports whether the sketch changed.
func (s *sketch) merge(o *sketch) bool {
	changed := false
	for i := 0; i < o.n; i++ {
		if s.n == sketchSize && o.hashes[i] > s.hashes[sketchSize-1] {
			break
		}
		if s.add(o.hashes[i]) {
			changed = true
		}
	}
	return changed
}

// estimate returns the estimated number of members.
func (s *sketch) estimate() float64 {
	if s.n < sketchSize {
		return float64(s.n)
	}
	kth := float64(s.hashes[sketchSize-1]) / (1 << 64)
	if kth == 0 {
		return float64(s.n)
	}
	return float64(sketchSize-1) / kth
}
