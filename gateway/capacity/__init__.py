"""Capacity: how many requests each deployment may run at once, the priority queue in front of it,
and the predictions admission control reads."""
