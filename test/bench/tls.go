package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// tlsFiles is the certificate every proxy serves with -tls (Caddy, HAProxy
// and nginx alike, so that all sign the same way and send the same chain):
// a self-signed ECDSA P-256 certificate for 127.0.0.1, which the load client
// does not verify.
type tlsFiles struct {
	cert, key string // PEM files
	combined  string // certificate and key in one file, for HAProxy
}

func writeSelfSigned(dir string) (*tlsFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "wsbench"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	f := &tlsFiles{
		cert:     filepath.Join(dir, "cert.pem"),
		key:      filepath.Join(dir, "key.pem"),
		combined: filepath.Join(dir, "combined.pem"),
	}
	for path, data := range map[string][]byte{f.cert: certPEM, f.key: keyPEM, f.combined: append(append([]byte{}, certPEM...), keyPEM...)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// tlsCipherSuite is the TLS 1.3 cipher suite every proxy is told to use
// (-tls): Go picks it by itself on a CPU with AES instructions, and HAProxy
// would otherwise prefer TLS_AES_256_GCM_SHA384.
const tlsCipherSuite = "TLS_AES_128_GCM_SHA256"

// clientTLSConfig is the load client's TLS config: no verification (the
// certificate is self-signed), no session cache (every handshake is a full
// one) and only the key exchange groups of -tls-groups on offer, so that no
// proxy pays for a heavier one than the others can negotiate.
func clientTLSConfig(groups string) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	if groups == "" || groups == "default" {
		return cfg, nil
	}
	names := map[string]tls.CurveID{}
	for _, id := range []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521, tls.X25519MLKEM768} {
		names[strings.ToLower(id.String())] = id
	}
	names["p-256"], names["p-384"], names["p-521"] = tls.CurveP256, tls.CurveP384, tls.CurveP521
	for _, g := range strings.Split(groups, ",") {
		id, ok := names[strings.ToLower(strings.TrimSpace(g))]
		if !ok {
			return nil, fmt.Errorf("-tls-groups: unknown group %q", g)
		}
		cfg.CurvePreferences = append(cfg.CurvePreferences, id)
	}
	return cfg, nil
}

// tlsParams names what one connection negotiated: version, key exchange
// group and cipher suite.
func tlsParams(cs tls.ConnectionState) string {
	return tls.VersionName(cs.Version) + " " + cs.CurveID.String() + " " + tls.CipherSuiteName(cs.CipherSuite)
}

// negotiated counts the connections of conns by what they negotiated, as
// "TLS 1.3 X25519 TLS_AES_128_GCM_SHA256 ×8000"; empty without TLS.
func negotiated(conns []*wconn) string {
	counts := map[string]int{}
	for _, w := range conns {
		if w == nil {
			continue
		}
		if tc, ok := w.c.NetConn().(*tls.Conn); ok {
			counts[tlsParams(tc.ConnectionState())]++
		}
	}
	var parts []string
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}
