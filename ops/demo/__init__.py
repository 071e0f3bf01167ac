"""``huddle demo``: a webinar end to end on one machine (see
:mod:`ops.demo.webinar`)."""
