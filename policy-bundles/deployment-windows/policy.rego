# Deployment windows: an environment listed in the data deploys only inside one of its
# windows (days and times in UTC, taken from `input.now`, which the daemon computes).
package deploylite.deploy.windows

import rego.v1

deny contains msg if {
	windows := data.deployment_windows[input.environment.name]
	not open_now(windows)
	msg := sprintf(
		"environment %s deploys only inside its windows (%s); it is %s %s UTC",
		[input.environment.name, concat("; ", [describe(w) | some w in windows]), input.now.weekday, clock],
	)
}

open_now(windows) if {
	some window in windows
	input.now.weekday in window.days
	window.from <= clock
	clock < window.until
}

# Zero-padded `HH:MM` strings order like the times they name.
clock := sprintf("%02d:%02d", [input.now.hour, input.now.minute])

describe(window) := sprintf("%s %s-%s", [concat(",", window.days), window.from, window.until])
