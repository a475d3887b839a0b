-- ARGV: P, I, presence_max. Instance I shuts down: everything it still holds leaves the hub
-- (with presence) at once, instead of when its heartbeat expires.
withdraw(ARGV[1], ARGV[2], tonumber(ARGV[3]))
return 1
