package deploylite.deploy.windows_test

import rego.v1

import data.deploylite.deploy.windows

weekdays := {"production": [{"days": ["mon", "tue", "wed", "thu"], "from": "09:00", "until": "16:00"}]}

deployment(environment, weekday, hour, minute) := {
	"gate": "deploylite.deploy",
	"now": {"weekday": weekday, "hour": hour, "minute": minute},
	"environment": {"name": environment},
}

test_inside_a_window_is_allowed if {
	count(windows.deny) == 0 with input as deployment("production", "tue", 9, 0)
		with data.deployment_windows as weekdays
}

test_the_end_of_a_window_is_outside if {
	windows.deny == {"environment production deploys only inside its windows (mon,tue,wed,thu 09:00-16:00); it is tue 16:00 UTC"} with input as deployment("production", "tue", 16, 0)
		with data.deployment_windows as weekdays
}

test_a_friday_is_outside if {
	count(windows.deny) == 1 with input as deployment("production", "fri", 10, 30)
		with data.deployment_windows as weekdays
}

test_an_environment_without_windows_deploys_any_time if {
	count(windows.deny) == 0 with input as deployment("staging", "sun", 3, 0)
		with data.deployment_windows as weekdays
}

test_any_of_several_windows_opens if {
	two := {"production": [
		{"days": ["sat"], "from": "10:00", "until": "11:00"},
		{"days": ["sun"], "from": "22:00", "until": "23:59"},
	]}
	count(windows.deny) == 0 with input as deployment("production", "sun", 22, 30)
		with data.deployment_windows as two
}
