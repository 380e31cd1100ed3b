package balancer

import (
	"slices"
	"testing"
)

func TestRelayList(t *testing.T) {
	t.Parallel()
	var l relayList
	rs := make([]*relay, 4)
	for i := range rs {
		rs[i] = &relay{}
		l.push(rs[i])
	}
	l.push(rs[2]) // already in: no change
	if got := l.collect(0, nil); !slices.Equal(got, []*relay{rs[3], rs[2], rs[1], rs[0]}) {
		t.Fatalf("list %v, want newest first", got)
	}
	l.remove(rs[3]) // head
	l.remove(rs[1]) // middle
	l.remove(rs[1]) // not in: no change
	if got := l.collect(0, nil); !slices.Equal(got, []*relay{rs[2], rs[0]}) {
		t.Fatalf("after removals %v", got)
	}
	if got := l.collect(1, nil); !slices.Equal(got, []*relay{rs[2]}) {
		t.Fatalf("collect(1) %v", got)
	}
	if got := l.collect(0, func(r *relay) bool { return r == rs[0] }); !slices.Equal(got, []*relay{rs[0]}) {
		t.Fatalf("collect(keep) %v", got)
	}
	l.remove(rs[0]) // tail
	l.remove(rs[2])
	if l.head != nil {
		t.Fatal("list not empty")
	}
}
