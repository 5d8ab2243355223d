package answercache

import "sync"

// lru is a size-bounded map of entries, evicting the least recently used. Each entry lives in one
// node holding its list links, key and entry by value: one allocation per cached VM, and nothing
// else (a general-purpose LRU adds per-element bookkeeping that 100k entries pay 100k times).
type lru[V any] struct {
	mu      sync.Mutex
	items   map[key]*node[V]
	root    node[V] // root.next is the most recently used, root.prev the least
	size    int
	onEvict func()
}

type node[V any] struct {
	prev, next *node[V]
	key        key
	entry      entry[V]
}

func newLRU[V any](size int, onEvict func()) *lru[V] {
	l := &lru[V]{items: make(map[key]*node[V]), size: size, onEvict: onEvict}
	l.root.prev, l.root.next = &l.root, &l.root
	return l
}

// get returns k's entry and marks it most recently used.
func (l *lru[V]) get(k key) (entry[V], bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, ok := l.items[k]
	if !ok {
		return entry[V]{}, false
	}
	l.unlink(n)
	l.pushFront(n)
	return n.entry, true
}

// peek returns k's entry without changing its recency.
func (l *lru[V]) peek(k key) (entry[V], bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.items[k]; ok {
		return n.entry, true
	}
	return entry[V]{}, false
}

// add stores e for k as the most recently used entry, evicting the least recently used one when
// the cache is full.
func (l *lru[V]) add(k key, e entry[V]) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.items[k]; ok {
		n.entry = e
		l.unlink(n)
		l.pushFront(n)
		return
	}
	if len(l.items) >= l.size {
		oldest := l.root.prev
		l.unlink(oldest)
		delete(l.items, oldest.key)
		if l.onEvict != nil {
			l.onEvict()
		}
	}
	n := &node[V]{key: k, entry: e}
	l.items[k] = n
	l.pushFront(n)
}

// update changes k's entry in place, if there is one, without changing its recency.
func (l *lru[V]) update(k key, f func(*entry[V])) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.items[k]; ok {
		f(&n.entry)
	}
}

func (l *lru[V]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.items)
}

func (l *lru[V]) unlink(n *node[V]) {
	n.prev.next, n.next.prev = n.next, n.prev
}

func (l *lru[V]) pushFront(n *node[V]) {
	n.prev, n.next = &l.root, l.root.next
	l.root.next.prev = n
	l.root.next = n
}
