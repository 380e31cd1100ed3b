package affinity

import (
	"encoding/base64"
	"strings"
	"testing"
)

var cookieKey = []byte("0123456789abcdef0123456789abcdef")

func mustCookies(t *testing.T, key []byte, ids []string) *Cookies {
	t.Helper()
	c, err := NewCookies(key, ids)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCookieNamesItsBackend(t *testing.T) {
	ids := []string{"chat-1", "chat-2", "10.0.0.7:8080", "10.0.0.8:8080"}
	c := mustCookies(t, cookieKey, ids)
	// Another balancer, its members in another order, shares the key.
	other := mustCookies(t, cookieKey, []string{ids[3], ids[2], ids[1], ids[0]})
	for i, id := range ids {
		v := c.Value(i)
		if strings.Contains(v, id) || strings.Contains(v, "10.0.0") || len(v) != 22 {
			t.Errorf("value %q for %s: want 22 opaque characters", v, id)
		}
		if got, ok := c.Match(v); !ok || got != i {
			t.Errorf("Match(Value(%d)) = %d, %v", i, got, ok)
		}
		if got, ok := other.Match(v); !ok || got != len(ids)-1-i {
			t.Errorf("another balancer matches %s's cookie as %d, %v; want %d", id, got, ok, len(ids)-1-i)
		}
	}
}

func TestCookieRejectsForgedAndStaleValues(t *testing.T) {
	ids := []string{"chat-1", "chat-2", "chat-3"}
	c := mustCookies(t, cookieKey, ids)
	good := c.Value(1)
	flip := []byte(good)
	flip[5] ^= 'A' ^ 'B'
	for _, tc := range []struct {
		name, value string
	}{
		{"empty", ""},
		{"the backend's ID", "chat-2"},
		{"one character changed", string(flip)},
		{"truncated", good[:21]},
		{"extended", good + "A"},
		{"padded", good + "=="},
		{"not base64", strings.Repeat("*", 22)},
		{"made with another key", mustCookies(t, []byte("another key of enough length!!!"), ids).Value(1)},
		{"stale: its backend left", mustCookies(t, cookieKey, append(ids, "chat-4")).Value(3)},
		{"an unkeyed hash of the ID", base64.RawURLEncoding.EncodeToString([]byte("chat-2\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if i, ok := c.Match(tc.value); ok {
				t.Errorf("Match(%q) = %d, want no match", tc.value, i)
			}
		})
	}
}

func TestCookiesRequireAKeyOf16Bytes(t *testing.T) {
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{"", false},
		{"short", false},
		{"fifteen bytes!!", false},
		{"sixteen bytes!!!", true},
	} {
		if _, err := NewCookies([]byte(tc.key), []string{"chat-1"}); (err == nil) != tc.ok {
			t.Errorf("NewCookies with a %d-byte key: %v, want ok %v", len(tc.key), err, tc.ok)
		}
	}
}

func TestCookieMatchAllocatesNothing(t *testing.T) {
	c := mustCookies(t, cookieKey, backendIDs("chat", 50))
	v := c.Value(7)
	if allocs := testing.AllocsPerRun(100, func() { c.Match(v) }); allocs != 0 {
		t.Errorf("Match allocates %v times, want 0", allocs)
	}
}
