package retry

import (
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Outage logs a run of failures as two lines: the first failure at Level
// with its error, and the recovery that ends the run at info with how many
// failures it took and how long; failures in between go to debug. A Consul
// agent down for an hour then costs two log lines, not one per retry. The
// zero value needs Logger and the two messages.
type Outage struct {
	Logger *zap.Logger
	// Failed is the first failure's message, Recovered the recovery's.
	Failed, Recovered string
	// Level of the first failure; zero means warn.
	Level zapcore.Level
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	failures int
	since    time.Time
}

// Fail records a failure and logs it if it starts a run; fields are added
// to that line.
func (o *Outage) Fail(err error, fields ...zap.Field) {
	o.failures++
	if o.failures > 1 {
		// A message of its own, so that searching the logs for Failed
		// finds the start of each run only.
		if c := o.Logger.Check(zapcore.DebugLevel, "failed again"); c != nil {
			c.Write(zap.String("run", o.Failed), zap.Int("failures", o.failures), zap.Error(err))
		}
		return
	}
	o.since = o.now()
	level := o.Level
	if level == 0 {
		level = zapcore.WarnLevel
	}
	if c := o.Logger.Check(level, o.Failed); c != nil {
		c.Write(append(fields, zap.Error(err))...)
	}
}

// OK ends a run of failures, if one was under way, and logs the recovery.
func (o *Outage) OK() {
	if o.failures == 0 {
		return
	}
	o.Logger.Info(o.Recovered, zap.Int("failures", o.failures), zap.Duration("after", o.now().Sub(o.since)))
	o.failures = 0
}

// Failures is the number of consecutive failures so far; 0 when the last
// attempt succeeded.
func (o *Outage) Failures() int { return o.failures }

func (o *Outage) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}
