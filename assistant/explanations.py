"""Hand-written how-to questions and short definitions.

Each entry: the question, the key terms a good answer contains (one group per
idea, ``|`` separates accepted variants of the same idea), and a reference
answer (the first sentence is the core; users who like longer answers keep
more sentences). A few carry a misconception to watch for."""

from __future__ import annotations

# question, key-term groups, reference answer, misconceptions (wrong phrases)
HOWTO: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "How do I boil an egg?",
        "boil|boiling, water, minutes",
        "Put the egg in a pot of boiling water and cook it for about nine minutes. Then cool it in cold water so it "
        "is easy to peel.",
        (),
    ),
    (
        "How do I make a cup of tea?",
        "boil|boiling|hot, water, tea bag|leaves, steep|brew",
        "Pour hot, freshly boiled water over a tea bag or loose leaves. Let it steep for three to five minutes, then "
        "remove the tea and add milk or sugar if you like.",
        (),
    ),
    (
        "How can I fall asleep faster?",
        "screen|screens|phone, routine|schedule, dark|cool|quiet",
        "Keep a regular sleep schedule and put screens away an hour before bed. A dark, cool and quiet room helps, "
        "and so does avoiding caffeine in the afternoon.",
        (),
    ),
    (
        "How do I change a flat tire?",
        "jack, lug nuts|nuts, spare",
        "Loosen the lug nuts, lift the car with the jack, and take the flat wheel off. Put the spare on, tighten the "
        "nuts by hand, lower the car and then tighten them fully.",
        (),
    ),
    (
        "How do I reset my Wi-Fi router?",
        "unplug|power|reset button, wait|seconds, plug",
        "Unplug the router from power, wait about thirty seconds, and plug it back in. For a factory reset, hold the "
        "reset button for about ten seconds instead.",
        (),
    ),
    (
        "How do I plant a tree?",
        "hole, roots, water|watering, soil",
        "Dig a hole twice as wide as the root ball and place the tree so its roots sit at ground level. Fill the "
        "hole with soil, press it down, and water the tree well.",
        (),
    ),
    (
        "How can I save money on groceries?",
        "list, budget|plan, compare|prices|sales",
        "Plan your meals and shop with a list so you buy only what you need. Compare prices, buy store brands and "
        "use sales for things you use often.",
        (),
    ),
    (
        "How do I write a good resume?",
        "experience, skills, short|concise|one page, tailor|job",
        "Keep it short and list your experience and skills with concrete results. Tailor it to each job you apply "
        "for and check it for typos.",
        (),
    ),
    (
        "How do I clean a cast iron pan?",
        "hot water|water, dry, oil",
        "Rinse the pan with hot water and scrub off food with a brush. Dry it completely on the stove and rub in a "
        "thin layer of oil to keep it from rusting.",
        ("dishwasher",),
    ),
    (
        "How do I remove a coffee stain from a shirt?",
        "cold water|water, blot|rinse, detergent|soap",
        "Rinse the stain from the back with cold water and blot it, do not rub. Work in a little liquid detergent, "
        "let it sit, then wash the shirt as usual.",
        (),
    ),
    (
        "How do I start running as a beginner?",
        "slow|slowly|easy, walk|walking, rest|week",
        "Start slowly by mixing short runs with walking breaks. Run three times a week with rest days in between and "
        "add a little time each week.",
        (),
    ),
    (
        "How do I learn a new language?",
        "practice|every day|daily, vocabulary|words, speak|speaking|native",
        "Practice a little every day and learn the most common words first. Speak with native speakers as early as "
        "you can and listen to the language often.",
        (),
    ),
    (
        "How do I make a good password?",
        "long|length, unique|different, password manager|random",
        "Use a long password, at least twelve characters, and never reuse it on another site. A password manager "
        "can create and remember random passwords for you.",
        (),
    ),
    (
        "How do I back up my computer?",
        "external drive|drive|cloud, regularly|schedule|automatic",
        "Copy your files to an external drive or a cloud service. Set the backup to run automatically on a regular "
        "schedule and check now and then that you can restore a file.",
        (),
    ),
    (
        "How do I cook rice on the stove?",
        "water, simmer|low heat, cover|lid, minutes",
        "Rinse the rice, then bring it to a boil with about twice as much water. Cover with a lid, simmer on low heat "
        "for about fifteen minutes, and let it rest before serving.",
        (),
    ),
    (
        "How do I get rid of hiccups?",
        "breath|breathe, water",
        "Hold your breath for a few seconds or slowly sip a glass of cold water. Most hiccups stop on their own "
        "within a few minutes.",
        (),
    ),
    (
        "How do I jump-start a car?",
        "jumper cables|cables, battery, positive|red, negative|black|ground",
        "Connect the red cable to the positive terminal of both batteries and the black cable to the good battery's "
        "negative terminal and a metal ground on the dead car. Start the working car, wait a few minutes, then start "
        "the other one.",
        (),
    ),
    (
        "How do I take care of a houseplant?",
        "water|watering, light|sunlight, drain|drainage|soil",
        "Water it when the top of the soil feels dry and give it the right amount of light. Use a pot with drainage "
        "so the roots never sit in water.",
        (),
    ),
    (
        "How do I prepare for a job interview?",
        "research|company, practice|questions, examples",
        "Research the company and the role, and practice answers to common questions. Prepare short examples of your "
        "work and a few questions to ask them.",
        (),
    ),
    (
        "How do I improve my handwriting?",
        "slow|slowly, practice, grip|pen|posture",
        "Write slowly and practice a few lines every day. Hold the pen with a relaxed grip and keep your letters the "
        "same size and slant.",
        (),
    ),
    (
        "How do I make pancakes?",
        "flour, eggs|egg, milk, pan",
        "Whisk flour, eggs, milk and a pinch of salt into a smooth batter. Pour a little into a hot, buttered pan "
        "and flip each pancake when bubbles form on top.",
        (),
    ),
    (
        "How do I focus better when studying?",
        "phone|distractions, breaks, goal|goals|plan",
        "Put your phone away and study in short blocks with small breaks. Set a clear goal for each session so you "
        "know when you are done.",
        (),
    ),
    (
        "How do I treat a small burn?",
        "cool water|cool|cold water, minutes, cover|bandage",
        "Hold the burn under cool running water for about ten minutes. Then cover it loosely with a clean bandage; "
        "see a doctor if it is large or blisters badly.",
        ("butter", "ice"),
    ),
    (
        "How do I tie a tie?",
        "knot, wide end|wide, loop|around",
        "Drape the tie with the wide end longer, cross it over the narrow end and wrap it around. Bring it up "
        "through the loop at your neck and down through the knot in front, then tighten.",
        (),
    ),
    (
        "How do I keep bread fresh longer?",
        "freeze|freezer, bag|wrap|sealed|bread box",
        "Keep it in a bread box or a sealed bag at room temperature for a few days. For longer, slice it and freeze "
        "it, then toast slices straight from the freezer.",
        ("refrigerator", "fridge"),
    ),
)

# term (as asked), key-term groups, reference answer, misconceptions
DEFINITIONS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "photosynthesis",
        "sunlight|light, carbon dioxide, water, oxygen|sugar|glucose",
        "Photosynthesis is how plants use sunlight to turn carbon dioxide and water into sugar. It releases oxygen "
        "as a by-product.",
        (),
    ),
    (
        "gravity",
        "force, mass|masses, attract|attracts|pull|pulls",
        "Gravity is the force by which masses attract each other. It keeps us on the ground and the planets in "
        "orbit around the Sun.",
        (),
    ),
    (
        "inflation",
        "prices, rise|increase|increasing, money|purchasing power",
        "Inflation is the general rise of prices over time. As prices increase, the same amount of money buys less.",
        (),
    ),
    (
        "a noun",
        "word, person|people, place, thing|things|idea",
        "A noun is a word that names a person, place, thing or idea. Examples are teacher, city and happiness.",
        (),
    ),
    (
        "a verb",
        "word, action|actions|doing, state|being",
        "A verb is a word that describes an action or a state. Examples are run, think and be.",
        (),
    ),
    (
        "democracy",
        "government, people|citizens, vote|voting|elect|elections",
        "Democracy is a system of government in which the people hold power. Citizens vote in elections to choose "
        "their leaders or decide laws.",
        (),
    ),
    (
        "an atom",
        "smallest|tiny|basic unit, element|matter, nucleus|protons|electrons",
        "An atom is the smallest unit of an element that keeps its properties. It has a nucleus of protons and "
        "neutrons with electrons around it.",
        (),
    ),
    (
        "a prime number",
        "divisible|divided|factors, one|1, itself",
        "A prime number is a whole number greater than one that is divisible only by one and itself. Examples are 2, "
        "3, 5 and 7.",
        (),
    ),
    (
        "evaporation",
        "liquid, gas|vapor|vapour, heat|heated|warm",
        "Evaporation is when a liquid turns into a gas, usually because it is heated. Puddles drying in the sun are "
        "an example.",
        (),
    ),
    (
        "an ecosystem",
        "living|organisms|plants|animals, environment|non-living|habitat, interact|interacting",
        "An ecosystem is a community of living organisms together with their environment. The plants, animals and "
        "surroundings all interact with each other.",
        (),
    ),
    (
        "a metaphor",
        "figure of speech|comparison|compares, without|not using|like or as",
        "A metaphor is a figure of speech that compares two things without using like or as. For example, time is "
        "a thief.",
        (),
    ),
    (
        "a budget",
        "plan, income|money, spending|expenses|spend",
        "A budget is a plan for how to use your income. It sets how much money goes to spending, saving and bills.",
        (),
    ),
    (
        "a virus",
        "cells|cell, infect|infects|infection, reproduce|copies|replicate",
        "A virus is a tiny infectious agent that can only reproduce inside the cells of a living host. It is not "
        "treated by antibiotics.",
        ("treated with antibiotics",),
    ),
    (
        "an algorithm",
        "steps|step-by-step|instructions, problem|task",
        "An algorithm is a finite list of step-by-step instructions for solving a problem or doing a task. A recipe "
        "is an everyday example.",
        (),
    ),
    (
        "climate",
        "weather, long|long-term|years|decades, average|pattern|patterns",
        "Climate is the average weather pattern of a place over a long time, usually thirty years or more. Weather "
        "is what happens day to day.",
        (),
    ),
    (
        "a mammal",
        "warm-blooded, milk, hair|fur",
        "A mammal is a warm-blooded animal that has hair or fur and feeds its young with milk. Humans, whales and "
        "dogs are mammals.",
        (),
    ),
    (
        "erosion",
        "wear|worn|wearing|carried, soil|rock|land, water|wind|ice",
        "Erosion is the wearing away of rock and soil by water, wind or ice. Rivers carving valleys are an example.",
        (),
    ),
    (
        "a hypothesis",
        "explanation|prediction|guess, tested|test|testable, experiment|evidence",
        "A hypothesis is a proposed explanation or prediction that can be tested. Scientists check it with "
        "experiments and evidence.",
        (),
    ),
    (
        "interest on a loan",
        "cost|fee|charge|money, borrowing|borrow|loan, percentage|rate",
        "Interest is the cost of borrowing money, usually a percentage of the loan charged each year. Savers earn "
        "interest for the same reason.",
        (),
    ),
    (
        "a synonym",
        "word, same|similar, meaning",
        "A synonym is a word with the same or a similar meaning as another word. Big and large are synonyms.",
        (),
    ),
    (
        "an antonym",
        "word, opposite, meaning",
        "An antonym is a word with the opposite meaning of another word. Hot and cold are antonyms.",
        (),
    ),
    (
        "friction",
        "force, surfaces|surface, resists|opposes|slows|against, motion|moving|sliding",
        "Friction is the force that resists motion when two surfaces rub against each other. It is why a rolling "
        "ball slows down.",
        (),
    ),
    (
        "a carnivore",
        "animal, meat|other animals",
        "A carnivore is an animal that eats mainly meat. Lions and wolves are carnivores.",
        ("eats only plants",),
    ),
    (
        "a herbivore",
        "animal, plants",
        "A herbivore is an animal that eats only plants. Cows, rabbits and deer are herbivores.",
        (),
    ),
    (
        "a recession",
        "economy|economic, decline|shrinks|falls|contraction, months|quarters|period",
        "A recession is a period when the economy shrinks, usually for at least two quarters in a row. Jobs and "
        "spending tend to fall.",
        (),
    ),
    (
        "DNA",
        "genetic|genes|hereditary, instructions|information, cells|organisms|living",
        "DNA is the molecule that carries the genetic instructions of living organisms. It is found in almost every "
        "cell.",
        (),
    ),
    (
        "an adjective",
        "word, describes|describe|modifies, noun|nouns",
        "An adjective is a word that describes a noun. In a red car, red is the adjective.",
        (),
    ),
    (
        "a fraction",
        "part|parts, whole, numerator|denominator|divided",
        "A fraction is a number that represents part of a whole, written as a numerator over a denominator. One half "
        "is a fraction.",
        (),
    ),
    (
        "renewable energy",
        "energy, replenished|naturally|renewed|does not run out, sun|solar|wind|water",
        "Renewable energy comes from sources that are naturally replenished, such as the sun, wind and water. Unlike "
        "coal or oil, it does not run out.",
        (),
    ),
    (
        "a volcano",
        "opening|vent|mountain, magma|lava, erupt|erupts|eruption",
        "A volcano is an opening in the Earth's crust where magma, gas and ash escape. When it erupts, lava flows out.",
        (),
    ),
)

DEFINITION_TEMPLATES = (
    "What is {term}?",
    "Can you explain what {term} is?",
    "Briefly, what is {term}?",
    "Define {term} in simple words.",
)
