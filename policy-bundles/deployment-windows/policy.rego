# Deployment windows: an environment listed in the data deploys only inside one of its
# windows (days and times in UTC, taken from `input.now`, which the daemon computes).
package deploylite.deploy.windows

import rego.v1

deny contains msg if {
	windows := data.deployment_windows[input.environment.name]
	not open_now
	msg := sprintf(
		"environment %s deploys only inside its windows (%s); it is %s %s UTC",
		[
			input.environment.name,
			concat("; ", [sprintf("%s %s-%s", [concat(",", w.days), w.from, w.until]) | some w in windows]),
			input.now.weekday, clock,
		],
	)
}

# A rule rather than a function of the windows, and the description inline: regorus
# evaluates a rule once per decision but enters a function anew at every call, at a few
# microseconds each, and a decision has a budget of 100 µs.
open_now if {
	some window in data.deployment_windows[input.environment.name]
	input.now.weekday in window.days
	window.from <= clock
	clock < window.until
}

# Zero-padded `HH:MM` strings order like the times they name.
clock := sprintf("%02d:%02d", [input.now.hour, input.now.minute])
