"""A user's side of reglab: a model module and a data export, to copy and adapt."""
