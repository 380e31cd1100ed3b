package test

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// BenchmarkAssign measures the rate and tail latency of /assign answers
// beside a stock `respond` of the same Caddy process, from 32 keep-alive
// clients:
//
//	go test -run '^$' -bench Assign -benchtime 20000x ./test/
//
// Run it without -race: the Caddy under test is built like the test binary.
// Backends are not dialled: this is the cost of choosing a backend and
// signing a token (Ed25519, and HS256 for comparison) and answering.
func BenchmarkAssign(b *testing.B) {
	key := harness.WriteSigningKey(b)
	hmacPath := filepath.Join(b.TempDir(), "hmac.key")
	secret := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	if err := os.WriteFile(hmacPath, []byte(secret), 0o600); err != nil {
		b.Fatal(err)
	}
	const backends = "ws://127.0.0.1:9001/ws ws://127.0.0.1:9002/ws ws://127.0.0.1:9003/ws"
	site := fmt.Sprintf(`	ws_balancer /assign {
		mode assign
		backends %[1]s
		token_key %[2]s
	}
	ws_balancer /assign-hs256 {
		mode assign
		backends %[1]s
		token_key %[3]s
	}
	respond /static "ok" 200
`, backends, key.Path, hmacPath)
	caddy := harness.StartCaddy(b, site)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	for _, bc := range []struct {
		name, path, accept string
		want               int
	}{
		{"respond", "/static", "", http.StatusOK},
		{"assign-redirect", "/assign", "", http.StatusTemporaryRedirect},
		{"assign-json", "/assign", "application/json", http.StatusOK},
		{"assign-json-hs256", "/assign-hs256", "application/json", http.StatusOK},
	} {
		b.Run(bc.name, func(b *testing.B) {
			url := "http://" + caddy.Addr() + bc.path
			client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			var mu sync.Mutex
			var all []time.Duration
			b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				lat := make([]time.Duration, 0, 1024)
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodGet, url, nil)
					if bc.accept != "" {
						req.Header.Set("Accept", bc.accept)
					}
					t0 := time.Now()
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					lat = append(lat, time.Since(t0))
					if resp.StatusCode != bc.want {
						b.Errorf("%s: %s", bc.path, resp.Status)
						return
					}
				}
				mu.Lock()
				all = append(all, lat...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(all)
			if len(all) > 0 {
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "req/s")
				b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(all[min(len(all)-1, len(all)*99/100)].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
