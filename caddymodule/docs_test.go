package caddymodule

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard" // the directives the docs use besides ours (basic_auth, file_server, ...)
)

// docCaddyfile is a Caddyfile of the documentation: a whole file, or a
// ```caddyfile block of a Markdown file.
type docCaddyfile struct {
	where string // file:line
	text  string
}

// TestDocsCaddyfiles adapts every Caddyfile of the documentation with
// Caddy's own adapter, so that the docs cannot drift from the parsers: the
// ```caddyfile blocks of README.md and docs/*.md, and the Caddyfiles at the
// top level and in demo/. A block that is only directives (a fragment, not
// a whole Caddyfile) is adapted inside a site block. Blocks under a
// heading that ends "(planned)" describe what does not exist yet and are
// skipped. Adapting reads no file a config names (Caddyfile.example's
// token key need not exist) and provisions nothing.
func TestDocsCaddyfiles(t *testing.T) {
	t.Parallel()
	var docs []docCaddyfile
	markdown, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range append([]string{"../README.md"}, markdown...) {
		docs = append(docs, markdownCaddyfiles(t, path)...)
	}
	whole, err := filepath.Glob("../Caddyfile*")
	if err != nil {
		t.Fatal(err)
	}
	demo, err := filepath.Glob("../demo/Caddyfile*")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range append(whole, demo...) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, docCaddyfile{where: strings.TrimPrefix(path, "../"), text: string(b)})
	}
	if len(docs) < 10 {
		t.Fatalf("only %d Caddyfiles found in the docs", len(docs))
	}
	for _, doc := range docs {
		t.Run(doc.where, func(t *testing.T) {
			text := doc.text
			if isFragment(text) {
				text = ":8080 {\n" + text + "\n}\n"
			}
			_, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": doc.where})
			if err != nil {
				t.Fatalf("%s does not adapt: %v\n%s", doc.where, err, text)
			}
			for _, w := range warnings {
				t.Logf("adapt warning: %s", w.String())
			}
		})
	}
}

// markdownCaddyfiles returns the ```caddyfile blocks of a Markdown file,
// but those under a "(planned)" heading.
func markdownCaddyfiles(t *testing.T, path string) []docCaddyfile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []docCaddyfile
	var block *bytes.Buffer
	start, planned := 0, false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case block != nil && strings.TrimSpace(line) == "```":
			if !planned {
				out = append(out, docCaddyfile{where: fmt.Sprintf("%s:%d", strings.TrimPrefix(path, "../"), start), text: block.String()})
			}
			block = nil
		case block != nil:
			block.WriteString(line + "\n")
		case strings.TrimSpace(line) == "```caddyfile":
			block, start = new(bytes.Buffer), n
		case strings.HasPrefix(line, "#"):
			planned = strings.HasSuffix(strings.TrimSpace(line), "(planned)")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// directiveName is how a fragment starts: a directive, not a site address
// (which has a dot, a colon or a slash) or a global options block.
var directiveName = regexp.MustCompile(`^[a-z_]+$`)

// isFragment reports whether a Caddyfile is only directives: its first
// token, comments aside, is a directive's name.
func isFragment(text string) bool {
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		first := strings.Fields(line)[0]
		return directiveName.MatchString(first) && first != "localhost"
	}
	return false
}
