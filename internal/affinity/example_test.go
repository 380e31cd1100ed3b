package affinity_test

import (
	"fmt"

	"github.com/wsbalancer/caddy-wsbalancer/internal/affinity"
)

// A balancer rebuilds its ring and cookies when membership changes, and for
// each connection fills the candidates from its pool, in the ring's order.
func Example() {
	ids := []string{"chat-a", "chat-b", "chat-c"}
	ring, err := affinity.NewRing(ids)
	if err != nil {
		panic(err)
	}
	cookies, err := affinity.NewCookies([]byte("a secret shared by all balancers"), ids)
	if err != nil {
		panic(err)
	}
	opt := affinity.Options{BalanceFactor: 1.25}
	cands := []affinity.Candidate{
		{ID: "chat-a", Load: 12, Eligible: true},
		{ID: "chat-b", Load: 10, Eligible: true},
		{ID: "chat-c", Load: 90, Eligible: false}, // draining
	}

	choose := func(key, cookie string) string {
		// A cookie naming an eligible backend below its bound wins.
		if i, ok := cookies.Match(cookie); ok && cands[i].Eligible && cands[i].Load < affinity.Bounds(cands, opt, nil)[i] {
			return ids[i] + " (cookie)"
		}
		if key == "" {
			return ids[affinity.LeastLoaded(cands, nil)] + " (least loaded)"
		}
		c, ok := ring.Pick(key, cands, opt)
		switch {
		case !ok:
			return "none"
		case c.Main:
			return fmt.Sprintf("%s (main, bound %d)", ids[c.Index], c.Bound)
		}
		return fmt.Sprintf("%s (spill, bound %d)", ids[c.Index], c.Bound)
	}

	fmt.Println("room-2:", choose("room-2", ""))
	fmt.Println("room-4:", choose("room-4", ""))
	fmt.Println("room-0:", choose("room-0", "")) // its first backend, chat-c, is draining
	fmt.Println("no key:", choose("", ""))
	fmt.Println("room-2 with chat-b's cookie:", choose("room-2", cookies.Value(1)))
	cands[0].Load = 20 // chat-a reaches the bound, ⌈1.25 · 31 / 2⌉
	fmt.Println("room-2:", choose("room-2", ""))
	// Output:
	// room-2: chat-a (main, bound 15)
	// room-4: chat-b (main, bound 15)
	// room-0: chat-a (main, bound 15)
	// no key: chat-b (least loaded)
	// room-2 with chat-b's cookie: chat-b (cookie)
	// room-2: chat-b (spill, bound 20)
}
