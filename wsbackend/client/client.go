package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// AssignDialOptions configure AssignAndDial. Nil options, and the zero
// value of each field, are usable defaults.
type AssignDialOptions struct {
	// HTTPClient asks for the assignment. Nil means a client with a 10s
	// timeout. Redirects are never followed, whatever its CheckRedirect:
	// the answer's Location is the WebSocket URL.
	HTTPClient *http.Client
	// Header is sent with the assignment request: credentials for the
	// authentication in front of /assign, typically.
	Header http.Header
	// Dialer opens the WebSocket. Nil means websocket.DefaultDialer.
	Dialer *websocket.Dialer
	// DialHeader is sent with the WebSocket handshake.
	DialHeader http.Header
}

// AssignError is a refused assignment request.
type AssignError struct {
	StatusCode int
	// RetryAfter is the wait the balancer asked for (503 answers), or 0.
	RetryAfter time.Duration
	// Body is the start of the answer's body.
	Body string
}

func (e *AssignError) Error() string {
	return fmt.Sprintf("assignment refused: %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Body)
}

// AssignAndDial asks a ws_balancer in assign mode for a backend and opens a
// WebSocket to it, the way a client of assign mode does: GET assignURL
// (accepting JSON), then dial the URL in the answer, which carries the
// token. A 307 redirect answer works too. It returns the connection and the
// assignment. A refused assignment is an *AssignError; a refused handshake
// is an error with the backend's status. Tokens are single-use: after a
// failed dial, ask for a new assignment rather than dialing the URL again.
func AssignAndDial(ctx context.Context, assignURL string, opts *AssignDialOptions) (*websocket.Conn, *protocol.Assignment, error) {
	var o AssignDialOptions
	if opts != nil {
		o = *opts
	}
	asg, err := RequestAssignment(ctx, assignURL, &o)
	if err != nil {
		return nil, nil, err
	}
	d := o.Dialer
	if d == nil {
		d = websocket.DefaultDialer
	}
	c, resp, err := d.DialContext(ctx, asg.URL, o.DialHeader)
	if err != nil {
		if resp != nil {
			return nil, asg, fmt.Errorf("dialing backend %s: %s: %w", asg.Backend, resp.Status, err)
		}
		return nil, asg, fmt.Errorf("dialing backend %s: %w", asg.Backend, err)
	}
	return c, asg, nil
}

// RequestAssignment asks for an assignment without dialing; see
// AssignAndDial. Only HTTPClient and Header of opts are used.
func RequestAssignment(ctx context.Context, assignURL string, opts *AssignDialOptions) (*protocol.Assignment, error) {
	var o AssignDialOptions
	if opts != nil {
		o = *opts
	}
	client := &http.Client{Timeout: 10 * time.Second}
	if o.HTTPClient != nil {
		c := *o.HTTPClient
		client = &c
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, assignURL, nil)
	if err != nil {
		return nil, fmt.Errorf("requesting assignment: %w", err)
	}
	for name, values := range o.Header {
		req.Header[name] = values
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("requesting assignment: %w", err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, 64<<10)

	var asg protocol.Assignment
	switch {
	case resp.StatusCode == http.StatusOK:
		if err := json.NewDecoder(body).Decode(&asg); err != nil {
			return nil, fmt.Errorf("decoding assignment: %w", err)
		}
	case resp.StatusCode == http.StatusTemporaryRedirect || resp.StatusCode == http.StatusFound ||
		resp.StatusCode == http.StatusSeeOther:
		asg.URL = resp.Header.Get("Location")
		if u, err := url.Parse(asg.URL); err == nil {
			asg.Token = u.Query().Get(token.DefaultQueryParam)
			asg.Backend, asg.ExpiresAt = peekClaims(asg.Token)
		}
	default:
		b, _ := io.ReadAll(io.LimitReader(body, 512))
		e := &AssignError{StatusCode: resp.StatusCode, Body: strings.TrimSpace(string(b))}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			e.RetryAfter = time.Duration(s) * time.Second
		}
		return nil, e
	}
	u, err := url.Parse(asg.URL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return nil, errors.New("assignment has no ws:// or wss:// URL")
	}
	return &asg, nil
}

// peekClaims reads the audience and expiry of a token without verifying
// it: the client holds no key, and only shows them to its user. Zero values
// when the token cannot be read.
func peekClaims(tok string) (audience string, expires time.Time) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return "", time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", time.Time{}
	}
	var c struct {
		Aud string `json:"aud"`
		Exp int64  `json:"exp"`
	}
	if json.Unmarshal(payload, &c) != nil || c.Exp <= 0 {
		return "", time.Time{}
	}
	return c.Aud, time.Unix(c.Exp, 0).UTC()
}
